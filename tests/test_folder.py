"""Folder datasets, end to end on real images: Fashion-MNIST test images written as a folder of mixed
formats, modes and sizes (10 labelled per class, a few hundred unlabelled, a test folder) plus broken
files; training, the skipped-file report, the cache, and class names in evaluate, predict and generate."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import gencls
from gencls.api import generate_class
from gencls.cli import main
from gencls.data import load_split
from gencls.data.sources import FASHION_MNIST_CLASSES
from gencls.training import train

QUIET = dict(progress=False, tensorboard=False, sample_every=0, device="cpu", threads=1)
CLASS_DIRS = [c.replace("/", "-") for c in FASHION_MNIST_CLASSES]  # "T-shirt/top" -> "T-shirt-top"
FORMATS = [("png", "L", 28), ("jpg", "RGB", 28), ("bmp", "L", 28), ("png", "RGB", 36), ("jpg", "L", 20),
           ("bmp", "RGB", 28), ("gif", "L", 28), ("png", "L", 28)]  # mostly grayscale, mostly 28x28


@pytest.fixture(scope="module")
def fashion_test(data_root):
    return load_split("fashion-mnist", "test", data_root, log=lambda s: None)


def write_image(path, pixels: np.ndarray, i: int) -> None:
    ext, mode, side = FORMATS[i % len(FORMATS)]
    im = Image.fromarray(pixels).convert(mode)
    if side != 28:
        im = im.resize((side, side), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path.with_suffix("." + ext), **({"quality": 95} if ext == "jpg" else {}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fashion_test):
    base = tmp_path_factory.mktemp("my-images")
    x, y = fashion_test.images[:, 0].numpy(), fashion_test.labels.numpy()
    order = np.arange(len(y))
    used = 0
    for c, name in enumerate(CLASS_DIRS):
        ix = order[y == c]
        for j, i in enumerate(ix[:10]):
            write_image(base / "labelled" / name / f"{j:02d}", x[i], int(i))
        for j, i in enumerate(ix[10:30]):
            write_image(base / "test" / name / f"{j:02d}", x[i], int(i))
    rest = order[np.isin(order, np.concatenate([order[y == c][:30] for c in range(10)]), invert=True)][:400]
    for j, i in enumerate(rest):
        write_image(base / "unlabelled" / f"batch{j % 3}" / ("deep" if j % 2 else "") / f"u{j:03d}", x[i], int(i))
        used += 1
    good = (base / "labelled" / "Bag").iterdir().__next__().read_bytes()
    (base / "labelled" / "Bag" / "truncated.png").write_bytes(good[: len(good) // 2])
    (base / "unlabelled" / "empty.png").write_bytes(b"")
    (base / "unlabelled" / "batch1" / "notes.png").write_text("this is a text file, not an image")
    (base / ".DS_Store").write_bytes(b"hidden files are ignored")
    return base


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, folder, cache_root):
    out = tmp_path_factory.mktemp("runs") / "folder-gan"
    lines = []
    train(gencls.TrainConfig(method="improved-gan", dataset=f"folder:{folder}", epochs=4, batch_size=50,
                             data_root=str(cache_root), out=str(out), **QUIET), log=lines.append)
    return out, lines


def test_folder_dataset_loads_with_defaults_from_the_data(folder, cache_root):
    lines = []
    train = load_split(f"folder:{folder}", "train", cache_root / "fresh", log=lines.append)
    test = load_split(f"folder:{folder}", "test", cache_root / "fresh", log=lambda s: None)
    assert train.image_shape == (1, 28, 28)  # most are 28x28, most are grayscale
    assert train.classes == sorted(CLASS_DIRS)
    assert int((train.labels >= 0).sum()) == 100 and int((train.labels == -1).sum()) == 400
    assert len(test) == 200 and bool((test.labels >= 0).all())
    assert train.defaults == {"labels": "all", "val_size": 0}
    skipped = train.run_files["skipped_files.json"]
    assert skipped["count"] == 3
    assert {s["path"] for s in skipped["files"]} == {"labelled/Bag/truncated.png", "unlabelled/empty.png",
                                                      "unlabelled/batch1/notes.png"}
    assert any("3 file(s) skipped" in s for s in lines) and any("truncated.png" in s for s in lines)


def test_folder_training_reports_bad_files_and_uses_class_names(folder_run, folder, capsys):
    out, lines = folder_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["labels"] == "all" and cfg["val_size"] == 0 and cfg["image_size"] == [28, 28] and cfg["channels"] == 1
    skipped = json.loads((out / "skipped_files.json").read_text())
    assert skipped["count"] == 3 and len(skipped["files"]) == 3
    assert json.loads((out / "test_files.json").read_text())["how"] == "the test folder"
    assert any("labelled 100" in s and "unlabelled 500" in s for s in lines)  # the 100 labelled are in the pool too
    assert any("3 file(s) could not be decoded" in s and "skipped_files.json" in s for s in lines)

    ev_lines = []
    report = gencls.evaluate(out, log=ev_lines.append)
    assert not any("decoding" in s for s in ev_lines)  # the training run's cache, under its resolved settings
    assert set(report["per_class_accuracy"]) == set(CLASS_DIRS) and report["n"] == 200
    assert report["error"] < 0.6, report["error"]  # chance 0.9; ~0.35-0.45 after these 40 steps

    assert main(["evaluate", str(out)]) == 0
    assert "Ankle boot:" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--split", "val"]) == 2  # --val-size 0: said in one line
    assert "no validation split" in capsys.readouterr().err
    files = [folder / "test" / "Trouser", folder / "test" / "Sneaker"]
    assert main(["predict", str(out), *map(str, files), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 40 and {r["class"] for r in rows} <= set(CLASS_DIRS)
    assert sum(r["class"] == "Trouser" for r in rows[:20]) >= 10  # trousers are the easiest class

    images, how = generate_class(out, "Trouser", n=2, seed=0, max_draws=512)
    assert how["class"] == "Trouser" and images.shape[1:] == (1, 28, 28)
    assert main(["generate", str(out), "--n", "6", "--seed", "0", "--out-dir", str(out / "gen")]) == 0
    names = sorted(p.stem.split("_pred-")[1] for p in (out / "gen").glob("*.png"))
    assert len(names) == 6 and set(names) <= set(CLASS_DIRS)


def test_second_load_comes_from_the_cache(folder, cache_root, folder_run):
    """The folder_run decoded and cached; a changed file with the same size and time proves nothing is decoded."""
    target = sorted((folder / "test" / "Bag").iterdir())[0]
    st = target.stat()
    before = load_split(f"folder:{folder}", "test", cache_root, log=lambda s: None)
    original = target.read_bytes()
    try:
        with Image.open(target) as im:
            inverted = Image.fromarray(255 - np.array(im))
        inverted.save(target, format=Image.registered_extensions()[target.suffix])
        data = target.read_bytes()
        if len(data) != st.st_size:  # keep the listing identical: same size (pad) and time
            target.write_bytes(data[: st.st_size].ljust(st.st_size, b"\0"))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        lines = []
        after = load_split(f"folder:{folder}", "test", cache_root, log=lines.append)
        assert not any("decoding" in s for s in lines)
        assert torch.equal(after.images, before.images)
    finally:
        target.write_bytes(original)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched file: decoded again
    caches = sorted((cache_root / "folder_cache").glob("*.safetensors"))
    lines = []
    load_split(f"folder:{folder}", "test", cache_root, log=lines.append)
    assert any("decoding" in s for s in lines)
    now = sorted((cache_root / "folder_cache").glob("*.safetensors"))
    assert len(now) == len(caches) and now != caches  # the folder's old cache was replaced


def test_class_folders_with_labels_hold_out_a_test_split(tmp_path, fashion_test):
    x, y = fashion_test.images[:, 0].numpy(), fashion_test.labels.numpy()
    base = tmp_path / "flat"
    for c in (0, 1, 7):
        for j, i in enumerate(np.nonzero(y == c)[0][:40]):
            write_image(base / CLASS_DIRS[c] / f"{j:02d}", x[i], 0)  # all 28x28 grayscale PNG
    kw = dict(root=tmp_path / "root", log=lambda s: None, image_size=16, channels=3)
    train = load_split(f"folder:{base}", "train", **kw)
    test = load_split(f"folder:{base}", "test", **kw)
    from gencls.data.folder import TEST_FRACTION, _path_fraction

    n_test = sum(_path_fraction(f"{CLASS_DIRS[c]}/{j:02d}.png") < TEST_FRACTION for c in (0, 1, 7) for j in range(40))
    assert 12 <= n_test <= 36  # about 20% of 40 per class
    assert train.image_shape == (3, 16, 16) and len(train) == 120 - n_test and len(test) == n_test
    assert train.defaults == {} and bool((train.labels >= 0).all())
    held = train.run_files["test_files.json"]
    assert "held out" in held["how"] and len(held["files"]) == n_test
    out = gencls.train(method="supervised", dataset=f"folder:{base}", labels=30, image_size=16, channels=3,
                       batch_size=20, epochs=1, data_root=str(tmp_path / "root"), method_config={"conv_width": 8},
                       out=str(tmp_path / "run"), **QUIET)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["val_size"] == len(train) // 10 and cfg["labels"] == 30  # the generic default: 10% of them
    assert json.loads((out / "test_files.json").read_text())["files"] == held["files"]
    assert gencls.evaluate(out, log=lambda s: None)["n"] == n_test


def test_folder_mistakes_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    (tmp_path / "one" / "cats" / "a.png").write_bytes(b"")
    for d in ("cats", "dogs", "unlabelled"):
        (tmp_path / "no-labelled" / d).mkdir(parents=True)
    for argv, expected in [
        (["--dataset", f"folder:{tmp_path / 'missing'}"], "no such folder"),
        (["--dataset", f"folder:{tmp_path / 'one'}"], "at least two classes"),
        (["--dataset", f"folder:{tmp_path / 'no-labelled'}"], "no labelled/"),
        (["--dataset", "digits", "--image-size", "3x"], "--image-size"),
        (["--dataset", "digits", "--image-size", "2"], "between 4 and 512"),
        (["--dataset", "digits", "--method", "acgan", "--arch", "conv"], "one set of networks"),
    ]:
        assert main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err, err


def tiny_png(path, value: int = 128, size=(8, 8), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, value // 2)).save(path)


def test_val_size_that_empties_a_class_is_one_line_naming_it(tmp_path, capsys):
    for c in ("a", "b"):
        for i in range(2):
            tiny_png(tmp_path / "imgs" / "labelled" / c / f"{i}.png", 40 * i + 20)
    for i in range(4):
        tiny_png(tmp_path / "imgs" / "unlabelled" / f"u{i}.png", 30 * i)
    # one of each class's two images is held out for test; --val-size 2 would take the other
    assert main(["train", "--dataset", f"folder:{tmp_path / 'imgs'}", "--val-size", "2", "--data-root",
                 str(tmp_path / "root"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--val-size 2 leaves class 'a' no labelled image" in err, err
    assert not (tmp_path / "run").exists()


def test_default_validation_size_too_small_for_a_subset_says_so(tmp_path, data_root, capsys):
    assert main(["train", "--subset", "50", "--labels", "10", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(the default: 10% of the 50 training images" in err, err
    assert "--val-size 0" in err


def quiet_load(base, split="train", root=None, **kw):
    return load_split(f"folder:{base}", split, root or base.parent / "root", log=lambda s: None, **kw)


def test_a_class_none_of_whose_files_decode_is_an_error(tmp_path, capsys):
    base = tmp_path / "imgs"
    for i in range(3):
        tiny_png(base / "a" / f"{i}.png", 50 * i)
        (base / "b").mkdir(parents=True, exist_ok=True)
        (base / "b" / f"{i}.png").write_text("not an image")
    assert main(["train", "--dataset", f"folder:{base}", "--data-root", str(tmp_path / "root"),
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "class folder 'b': none of its 3 files could be decoded" in err, err
    assert "b/0.png: not a readable image" in err


@pytest.mark.parametrize("lab,unlab", [("labeled", "unlabeled"), ("labelled", "unlabeled"), ("labeled", "unlabelled")])
def test_american_spellings_of_the_layout(tmp_path, lab, unlab):
    base = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for i in range(3):
            tiny_png(base / lab / c / f"{i}.png", 40 * i)
    for i in range(4):
        tiny_png(base / unlab / f"u{i}.png", 20 * i)
    train = quiet_load(base)
    assert train.classes == ["cat", "dog"] and int((train.labels == -1).sum()) == 4
    assert train.defaults == {"labels": "all", "val_size": 0}


def test_both_spellings_at_once_is_an_error(tmp_path):
    base = tmp_path / "imgs"
    for lab in ("labelled", "labeled"):
        for c in ("cat", "dog"):
            tiny_png(base / lab / c / "0.png")
    with pytest.raises(gencls.errors.GenclsError, match="both labelled/ and labeled/"):
        quiet_load(base)


def test_symbolic_links_are_followed_once_and_broken_ones_listed(tmp_path):
    base, elsewhere = tmp_path / "imgs", tmp_path / "elsewhere"
    for c in ("cat", "dog"):
        for i in range(2):
            tiny_png(base / "labelled" / c / f"{i}.png", 40 * i)
    for i in range(3):
        tiny_png(elsewhere / "more" / f"m{i}.png", 30 * i)
    (base / "labelled" / "cat" / "linked").symlink_to(elsewhere / "more", target_is_directory=True)
    (base / "labelled" / "cat" / "loop").symlink_to(base / "labelled" / "cat", target_is_directory=True)
    (base / "labelled" / "dog" / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(base / "labelled" / "dog" / "fifo.png")
    for i in range(2):
        tiny_png(elsewhere / "pool" / f"p{i}.png")
    (base / "unlabelled").mkdir()
    (base / "unlabelled" / "pool").symlink_to(elsewhere / "pool", target_is_directory=True)
    train = quiet_load(base)
    test = quiet_load(base, "test")
    assert int((train.labels == 0).sum() + (test.labels == 0).sum()) == 5  # 2 + the 3 linked
    assert int((train.labels == -1).sum()) == 2  # the linked pool
    skipped = {s["path"]: s["reason"] for s in train.run_files["skipped_files.json"]["files"]}
    assert skipped["labelled/dog/gone.png"] == "a broken symbolic link"
    assert skipped["labelled/dog/fifo.png"] == "not a regular file"
    assert "symbolic link loop" in skipped["labelled/cat/loop"]


def test_default_size_follows_exif_rotation(tmp_path):
    base = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(3):
            im = Image.new("L", (24, 16), 60 * i)  # 24 wide, 16 high as stored
            exif = Image.Exif()
            exif[0x0112] = 6  # shown rotated by 90 degrees: 16 wide, 24 high
            (base / c).mkdir(parents=True, exist_ok=True)
            im.save(base / c / f"{i}.jpg", exif=exif)
    assert quiet_load(base).image_shape == (1, 24, 16)


def write_class_folder(base, n_per_class: int, classes=("cat", "dog"), start=0):
    for c in classes:
        for i in range(start, start + n_per_class):
            tiny_png(base / c / f"{i:03d}.png", (7 * i) % 256)


def test_the_training_split_has_a_fingerprint_of_its_files_in_row_order(tmp_path):
    base, root = tmp_path / "imgs", tmp_path / "root"
    write_class_folder(base, 10)
    first = quiet_load(base, root=root)
    again = quiet_load(base, root=root)  # from the cache
    again_fresh = quiet_load(base, root=tmp_path / "other-root")  # decoded again
    assert isinstance(first.fingerprint, str) and len(first.fingerprint) == 64
    assert first.fingerprint == again.fingerprint == again_fresh.fingerprint
    assert quiet_load(base, "test", root=root).fingerprint != first.fingerprint

    cfg = gencls.TrainConfig(dataset=f"folder:{base}", data_root=str(root))
    from gencls.data.datasets import load_run_split
    assert load_run_split(cfg, "train", log=lambda s: None).fingerprint == first.fingerprint

    tiny_png(base / "cat" / "zzz-new.png", 99)
    added = quiet_load(base, root=root)
    assert added.fingerprint != first.fingerprint
    (base / "cat" / "zzz-new.png").unlink()
    assert quiet_load(base, root=root).fingerprint == first.fingerprint
    target = base / "dog" / "000.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched (a copy, a clone): the same rows
    assert quiet_load(base, root=root).fingerprint == first.fingerprint
    tiny_png(target, 3, size=(9, 9))  # another picture of another size in the same place
    assert quiet_load(base, root=root).fingerprint != first.fingerprint
    assert load_split("digits", "train", tmp_path, log=lambda s: None).fingerprint is None


def held_out(base, root, **kw):
    return {f["path"] for f in quiet_load(base, root=root, **kw).run_files["test_files.json"]["files"]}


def test_held_out_test_files_stay_when_files_are_added(tmp_path):
    from gencls.data.folder import TEST_FRACTION, _path_fraction

    base, root = tmp_path / "imgs", tmp_path / "root"
    write_class_folder(base, 40)
    before = held_out(base, root)
    assert before == {f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in range(40)
                      if _path_fraction(f"{c}/{i:03d}.png") < TEST_FRACTION}
    assert 8 <= len(before) <= 24  # about 20% of 80
    write_class_folder(base, 60, start=40)  # 120 more files
    after = held_out(base, root)
    assert before <= after  # no old test file moves into training
    old_files = {f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in range(40)}
    assert after & old_files == before  # and no old training file into test


def test_small_classes_keep_one_test_and_one_training_file(tmp_path):
    from gencls.data.folder import TEST_FRACTION, _path_fraction

    base = tmp_path / "imgs"
    names = {"cat": [], "dog": []}
    i = 0
    while len(names["cat"]) < 3 or len(names["dog"]) < 2:  # cat: 3 files above the threshold; dog: 2 below
        name = f"{i:04d}.png"
        if len(names["cat"]) < 3 and _path_fraction(f"cat/{name}") >= TEST_FRACTION:
            names["cat"].append(name)
        if len(names["dog"]) < 2 and _path_fraction(f"dog/{name}") < TEST_FRACTION:
            names["dog"].append(name)
        i += 1
    for c, files in names.items():
        for n in files:
            tiny_png(base / c / n)
    test = held_out(base, tmp_path / "root")
    smallest = min(names["cat"], key=lambda n: _path_fraction(f"cat/{n}"))
    largest = max(names["dog"], key=lambda n: _path_fraction(f"dog/{n}"))
    assert test == {f"cat/{smallest}", f"dog/{sorted(set(names['dog']) - {largest})[0]}"}


def test_runs_trained_before_keep_their_test_split(tmp_path):
    """A run's config.json without folder_test_rule (made before it) holds out by the old rule."""
    base, root = tmp_path / "imgs", tmp_path / "root"
    write_class_folder(base, 12)
    out = gencls.train(method="supervised", dataset=f"folder:{base}", labels=4, val_size=2, batch_size=4,
                       epochs=1, data_root=str(root), method_config={"conv_width": 8}, out=str(tmp_path / "run"),
                       **QUIET)
    saved = json.loads((out / "config.json").read_text())
    assert saved["folder_test_rule"] == 2
    new_rule = {f["path"] for f in json.loads((out / "test_files.json").read_text())["files"]}
    assert new_rule == held_out(base, root)

    old = {f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in sorted(
        range(12), key=lambda i, c=c: hashlib.sha256(f"{c}/{i:03d}.png".encode()).hexdigest())[:2]}
    assert held_out(base, root, folder_test_rule=1) == old  # round(0.2 * 12) per class, first by hash
    assert old != new_rule

    del saved["folder_test_rule"]
    (out / "config.json").write_text(json.dumps(saved))
    cfg = gencls.TrainConfig.from_dict(saved)
    assert cfg.folder_test_rule == 1
    assert gencls.TrainConfig.from_dict(saved, saved=False).folder_test_rule == 2
    assert gencls.TrainConfig().folder_test_rule == 2
    from gencls.data.datasets import load_run_split
    test = load_run_split(cfg, "test", log=lambda s: None)
    assert {f["path"] for f in test.run_files["test_files.json"]["files"]} == old and len(test) == 4
    assert gencls.evaluate(out, log=lambda s: None)["n"] == len(new_rule)  # the checkpoint's config: rule 2


def test_the_config_default_is_the_folder_modules_current_rule():
    from gencls.data.folder import TEST_RULE

    assert gencls.TrainConfig().folder_test_rule == TEST_RULE


def test_default_label_count_too_large_says_it_is_the_default(tmp_path, capsys):
    """A flat class-folder layout defaults to 100 labels: a smaller folder is told how to change it."""
    for c in ("a", "b"):
        for i in range(12):
            tiny_png(tmp_path / "imgs" / c / f"{i}.png", 20 * (i % 10))
    assert main(["train", "--dataset", f"folder:{tmp_path / 'imgs'}", "--data-root", str(tmp_path / "root"),
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is this dataset's default" in err and "--labels all" in err, err


def test_generation_metrics_of_a_folder_run_use_its_own_images(folder_run, folder, cache_root, capsys, monkeypatch):
    """``evaluate --generation`` on a folder dataset: the feature network is trained on the folder's
    labelled training images at the run's shape, the real side is the run's test split, and the
    network is cached under a file name of its own (the dataset name holds a path)."""
    from gencls.evaluation import featurenet

    monkeypatch.setitem(featurenet.RECIPE, "min_steps", 50)  # the real 1,000 steps on 100 images: a minute here
    out, _ = folder_run
    report = gencls.evaluate(out, generation=True, n=200, cas_epochs=1, log=lambda s: None)["generation"]
    info = report["feature_net"]
    assert info["file"].startswith(f"folder-{folder.name}-") and "/" not in info["file"], info
    nets = list((cache_root / "feature_nets").glob("folder-*-cnn-v1.json"))
    assert len(nets) == 1
    saved = json.loads(nets[0].read_text())
    assert saved["train_images"] == 100 and saved["test_images"] == 200 and saved["image_shape"] == [1, 28, 28]
    assert report["n_real"] == 200 and math.isfinite(report["fid"]) and report["classifier_score"] >= 1.0
    assert report["cas"] is None  # improved-gan generates no chosen class
    # again: the cached network and features, the same numbers
    again = gencls.evaluate(out, generation=True, n=200, cas_epochs=1, write=False, log=lambda s: None)["generation"]
    assert again["fid"] == report["fid"] and again["feature_net"]["sha256"] == info["sha256"]
    # the CLI's prepare makes the same network for the folder (found in the cache, not trained again)
    assert main(["metrics", "prepare", "--dataset", f"folder:{folder}", "--data-root", str(cache_root)]) == 0
    assert ", cached, was trained" in capsys.readouterr().out


def test_compare_on_a_labelled_folder_uses_trains_defaults(tmp_path, folder, cache_root):
    """compare on folder:PATH with PATH/labelled/ takes every labelled image, as train does (its
    default of 100 labels failed: e.g. 'class eight has only 7 images, 10 needed')."""
    from gencls.comparison import CompareConfig, compare

    out = tmp_path / "cmp"
    summary = compare(CompareConfig(methods=["supervised"], dataset=f"folder:{folder}", seeds=1, epochs=1,
                                    batch_size=50, threads=1, device="cpu", data_root=str(cache_root), out=str(out)),
                      log=lambda s: None)
    assert summary["settings"]["labels"] is None and summary["runs"][0]["labelled_images"] == 100
    assert json.loads((out / "runs" / "supervised-seed1" / "config.json").read_text())["labels"] == "all"
    assert "100 labels" in (out / "compare.md").read_text().splitlines()[0]
    assert "100 labels</h1>" in gencls.report(out).read_text()  # not "None labels"
