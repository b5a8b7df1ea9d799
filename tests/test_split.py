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
