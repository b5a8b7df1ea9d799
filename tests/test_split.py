import pytest
import torch

from gencls.data import make_split
from gencls.errors import GenclsError


def targets(n=2000, k=10, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def test_balanced_disjoint_and_complete():
    y = targets()
    s = make_split(y, 100, 500, data_seed=3)
    assert len(s.labelled) == 100 and len(s.validation) == 500
    assert torch.bincount(y[s.labelled], minlength=10).tolist() == [10] * 10
    assert torch.bincount(y[s.validation], minlength=10).tolist() == [50] * 10
    assert not set(s.labelled.tolist()) & set(s.validation.tolist())
    # unlabelled: everything outside validation, labelled images included
    assert set(s.unlabelled.tolist()) == set(range(len(y))) - set(s.validation.tolist())
    assert set(s.labelled.tolist()) <= set(s.unlabelled.tolist())


def test_fixed_by_seed():
    y = targets()
    a, b, c = make_split(y, 100, 500, 1), make_split(y, 100, 500, 1), make_split(y, 100, 500, 2)
    assert torch.equal(a.labelled, b.labelled) and torch.equal(a.validation, b.validation)
    assert not torch.equal(a.labelled, c.labelled)


def test_labelled_set_does_not_depend_on_validation_size():
    y = targets()
    assert torch.equal(make_split(y, 55, 205, 1).labelled, make_split(y, 55, 703, 1).labelled)


def test_uneven_count_and_all():
    y = targets()
    s = make_split(y, 105, 500, 1)
    counts = torch.bincount(y[s.labelled], minlength=10)
    assert counts.sum() == 105 and counts.max() - counts.min() == 1
    s = make_split(y, "all", 500, 1)
    assert torch.equal(s.labelled, s.unlabelled)


@pytest.mark.parametrize("labels,val", [(7, 500), (0, 500), (100, 2000), (100, 5)])
def test_impossible_requests_are_user_errors(labels, val):
    with pytest.raises(GenclsError):
        make_split(targets(), labels, val, 1)


def test_images_without_labels_only_join_the_unlabelled_set():
    t = torch.tensor([0, 1, 2] * 6 + [-1] * 30)
    s = make_split(t, "all", val_size=3, data_seed=1, num_classes=3)
    assert bool((t[s.labelled] >= 0).all()) and bool((t[s.validation] >= 0).all())
    assert len(s.labelled) == 15 and len(s.validation) == 3 and len(s.unlabelled) == 45
    assert set(range(18, 48)) <= set(s.unlabelled.tolist())


def test_validation_that_takes_every_labelled_image_of_a_class_is_refused_by_name():
    t = torch.tensor([0, 1, 1, 1])  # --val-size 2 takes one image of each class
    with pytest.raises(GenclsError, match="--val-size 2 leaves class 'cat' no labelled image"):
        make_split(t, "all", 2, 1, num_classes=2, class_names=["cat", "dog"])
    with pytest.raises(GenclsError, match="--labels 2: class 'cat' has only 0 images left after --val-size 2 takes 1"):
        make_split(t, 2, 2, 1, num_classes=2, class_names=["cat", "dog"])
    with pytest.raises(GenclsError, match="--val-size 6: class 'cat' has only 2 images, 3 needed"):
        make_split(torch.tensor([0, 0] + [1] * 8), 2, 6, 1, num_classes=2, class_names=["cat", "dog"])
    s = make_split(torch.tensor([0, 0, 0, 1, 1, 1]), "all", 2, 1, num_classes=2, class_names=["cat", "dog"])
    assert torch.bincount(torch.tensor([0, 0, 0, 1, 1, 1])[s.labelled]).tolist() == [2, 2]


def test_a_failing_default_validation_size_says_it_is_the_default():
    with pytest.raises(GenclsError) as e:
        make_split(targets(50), 10, 5, 1, num_classes=10, val_default="10% of the 50 training images, at most 5000")
    msg = str(e.value)
    assert "--val-size 5 (the default: 10% of the 50 training images" in msg
    assert "give --val-size 0 (no validation split) or --val-size N with N >= 10" in msg
    with pytest.raises(GenclsError) as e:
        make_split(targets(50), 10, 5, 1, num_classes=10)  # given by the user: no word about defaults
    assert "default" not in str(e.value)


def test_chosen_labelled_images_and_validation_from_the_rest():
    """--labelled: exactly those images are labelled; validation is drawn, balanced, from the others."""
    y = targets()
    chosen = torch.cat([(y == c).nonzero().flatten()[:3] for c in range(10)]).sort().values
    s = make_split(y, chosen, 500, data_seed=3)
    assert torch.equal(s.labelled, chosen)
    assert torch.bincount(y[s.validation], minlength=10).tolist() == [50] * 10
    assert not set(chosen.tolist()) & set(s.validation.tolist())
    assert set(s.unlabelled.tolist()) == set(range(len(y))) - set(s.validation.tolist())
    assert torch.equal(make_split(y, chosen, 500, data_seed=3).validation, s.validation)
    with pytest.raises(GenclsError, match="--labelled: no image of class 9 among the 27 listed"):
        make_split(y, chosen[y[chosen] != 9], 500, data_seed=3)
    y2 = y.clone()
    y2[chosen[0]] = -1  # a folder's unlabelled image
    with pytest.raises(GenclsError, match=f"--labelled: row {int(chosen[0])} of the training set has no label"):
        make_split(y2, chosen, 500, data_seed=3)
    rows = torch.arange(len(y)) + 1000  # a --subset draw: position i is row 1000 + i
    with pytest.raises(GenclsError, match=f"--labelled: row {int(chosen[0]) + 1000} of the training set has no"):
        make_split(y2, chosen, 500, data_seed=3, rows=rows)


def test_labelled_rows_through_a_subset_and_from_files(tmp_path):
    import json

    from gencls.data.split import labelled_positions, read_labelled_file

    assert labelled_positions([5, 2], None, 10).tolist() == [5, 2]
    assert labelled_positions([7, 2], torch.tensor([2, 9, 7]), 10).tolist() == [2, 0]
    with pytest.raises(GenclsError, match="row 10 is past the 10 training images"):
        labelled_positions([10], None, 10)
    with pytest.raises(GenclsError, match=f"row {2**70} is past the 10 training images"):
        labelled_positions([1, 2**70], None, 10)  # a typo of many digits: one line, not a traceback
    with pytest.raises(GenclsError, match="row 3 is not among the --subset 3 images"):
        labelled_positions([3], torch.tensor([2, 9, 7]), 10)

    (tmp_path / "a.txt").write_text("# my picks\n12, 7\n3   # a three\n\n40\n")
    assert read_labelled_file(tmp_path / "a.txt") == [12, 7, 3, 40]
    (tmp_path / "b.json").write_text("[4, 1]")
    assert read_labelled_file(tmp_path / "b.json") == [4, 1]
    (tmp_path / "split.json").write_text(json.dumps({"labelled": [0, 2], "subset": [30, 10, 20], "validation": [1]}))
    assert read_labelled_file(tmp_path / "split.json") == [30, 20]  # a run's positions -> rows of the training set
    for bad in ([0, -1], [0, 3], [0, True], [0, 1.0]):  # -1 was subset[-1], True subset[1]
        (tmp_path / "split.json").write_text(json.dumps({"labelled": bad, "subset": [30, 10, 20]}))
        with pytest.raises(GenclsError, match="positions do not fit its 'subset'"):
            read_labelled_file(tmp_path / "split.json")
    for text, needle in [("1 2 x", "'x' is not a row number"), ("# none\n", "no rows in it"),
                         ('{"a": 1}', "needs a 'labelled' list"), ("[1, 2.5]", "expected a list of row numbers"),
                         ("[1,", "not valid JSON")]:
        (tmp_path / "bad").write_text(text)
        with pytest.raises(GenclsError, match=needle):
            read_labelled_file(tmp_path / "bad")
    with pytest.raises(GenclsError, match="no such file"):
        read_labelled_file(tmp_path / "missing.txt")


def test_labelled_rows_in_the_configuration():
    from gencls.config import TrainConfig

    assert TrainConfig(labelled=[9, 3, 5]).validate().labelled == [3, 5, 9]
    for kw, needle in [(dict(labelled=[3, 3]), "row 3 is listed twice"), (dict(labelled=[]), "at least one row"),
                       (dict(labelled=[1, -2]), "-2 is not a row"), (dict(labelled=[1, True]), "True is not a row"),
                       (dict(labelled=[1, 2], labels=5), "--labels 5 and --labelled \\(2 rows\\) disagree")]:
        with pytest.raises(GenclsError, match=needle):
            TrainConfig(**kw).validate()
    assert TrainConfig(labelled=[1, 2], labels=2).validate().labels == 2
    # several seeds, each its own subset draw: the rows cannot be in every one ("row 2 is not among the
    # --subset images drawn for this run", whichever seed it was); one data seed for all is fine
    with pytest.raises(GenclsError, match="give --data-seed D"):
        TrainConfig(labelled=[1, 2], subset=1000, seeds=[1, 2]).validate()
    TrainConfig(labelled=[1, 2], subset=1000, seeds=[1, 2], data_seed=1).validate()
    TrainConfig(labelled=[1, 2], subset=1000, seeds=[3]).validate()
