"""Folder datasets: your own images, a few labelled per class and a pile of unlabelled ones.

``--dataset folder:PATH`` reads one of two layouts:

- ``PATH/labelled/<class>/*``, optional ``PATH/unlabelled/**`` (any depth, no labels) and optional
  ``PATH/test/<class>/*``. Every labelled image is used (``--labels all`` by default) and there is
  no validation split by default (``--val-size 0``: with ten labelled images per class, taking
  some for validation costs more than model selection gains; the last epoch's model is kept).
  Give ``--labels N`` / ``--val-size N`` to draw them from the labelled images instead.
- ``PATH/<class>/*``: every image labelled by its folder; ``--labels N`` takes N of them
  (balanced) as labelled, the rest are the unlabelled pool (and the validation split, as for MNIST).

``labeled/`` and ``unlabeled/`` are the same folders (both spellings at once is an error).

Files at any depth below a class folder belong to that class; symbolic links are followed (a
folder reached twice, e.g. through a link loop, is read once), broken links and what is not a
regular file (a FIFO, a device) are listed as skipped. Every regular file that is not hidden is
tried; PIL decodes it with the project's safe decoder (``gencls.imagefile``, decompression-bomb
guard), converts it to ``channels`` and stretches it to ``image_size``. A file that cannot be
decoded is skipped, counted, logged and listed (``skipped_files.json`` in the run folder); a class
none of whose files can be decoded is an error. Defaults: ``image_size`` is the most common size
(as shown, after EXIF rotation) when both sides are multiples of 4 between 8 and 64, else 32x32;
``channels`` is 1 when most images are grayscale, else 3.

Without a test folder, about 20% of each class's labelled images are held out as the test split,
each file on its own by a hash of its path (``_hold_out_test``: adding a file moves no other one);
the list is saved (``test_files.json`` in the run folder). The rule is versioned: a run records it
(``TrainConfig.folder_test_rule``), and runs made before rule 2 keep their test split (rule 1). The
cache holds the images before any is held out. Each split has a ``fingerprint``: a hash of its
files (relative path, size) in row order; a run keeps its training split's in ``split.json``.

The decoded images are cached in ``<data root>/folder_cache/<folder>-<listing>.safetensors`` (one
uint8 tensor, the labels and a JSON index), keyed by hashes of the folder's path and conversion
settings and of its listing (paths, sizes, modification times): a second run decodes nothing.
Settings left to the data point (a small ``.json``) to the cache of the settings they resolved to,
so a run and its ``evaluate`` (which passes the resolved settings) share one cache. Change a file
and the listing's hash changes: the folder is decoded again and its old cache removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from gencls.errors import GenclsError, InputError
from gencls.imagefile import MAX_PIXELS, decode_image

CACHE_VERSION = 3  # 2: 16-bit/float scaled by their type's range, tRNS as alpha; 3: cached before the hold-out
TEST_FRACTION = 0.2
# How the test split is held out without a test folder (see _hold_out_test): 2 for new runs; a run
# records it (TrainConfig.folder_test_rule), one trained before has rule 1.
TEST_RULE = 2
TEST_RULES = (1, 2)
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
PARTS = {"train": 0, "unlabelled": 1, "test": 2}
ORIENTATION = 0x0112  # the EXIF tag


def _files_under(folder: Path, skipped: list[dict], base: Path) -> list[tuple[Path, os.stat_result]]:
    """Every regular, non-hidden file below ``folder`` (hidden folders skipped too): a folder's files
    (sorted), then its subfolders' (sorted, depth first), as ``os.walk`` lists them. Symbolic links
    are followed, a folder already read (a link loop, or two links to one folder) only once; broken
    links and what is neither a file nor a folder (a FIFO, a socket, a device) go to ``skipped``.
    Each file comes with its ``stat`` (of the file a link points to)."""
    out: list[tuple[Path, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()

    def skip(p: Path, reason: str) -> None:
        skipped.append({"path": p.relative_to(base).as_posix(), "reason": reason})

    def walk(d: Path) -> None:
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                skip(d, "a folder already read (a symbolic link loop or a second link to it)")
                return
            seen.add((st.st_dev, st.st_ino))
            names = sorted(e.name for e in os.scandir(d) if not e.name.startswith("."))
        except OSError as e:
            skip(d, f"cannot be listed ({e.strerror or type(e).__name__})")
            return
        subdirs = []
        for name in names:
            p = d / name
            try:
                st = p.stat()  # follows symbolic links
                mode = st.st_mode
            except OSError as e:
                why = e.strerror or type(e).__name__
                skip(p, "a broken symbolic link" if p.is_symlink() else f"cannot be read ({why})")
                continue
            if stat.S_ISDIR(mode):
                subdirs.append(p)
            elif stat.S_ISREG(mode):
                out.append((p, st))
            else:
                skip(p, "not a regular file")
        for p in subdirs:
            walk(p)

    walk(folder)
    return out


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


SPELLINGS = {"labelled": ("labelled", "labeled"), "unlabelled": ("unlabelled", "unlabeled")}


def _layout_dir(base: Path, part: str) -> Path | None:
    """``base/labelled`` or ``base/labeled`` (``unlabelled``/``unlabeled`` alike), whichever exists;
    both is an error."""
    found = [base / name for name in SPELLINGS[part] if (base / name).is_dir()]
    if len(found) > 1:
        raise GenclsError(f"--dataset folder:{base}: both {found[0].name}/ and {found[1].name}/; the two spellings "
                          "are one folder: keep one")
    return found[0] if found else None


def list_folder(base: Path) -> dict:
    """The layout, the classes and every file: ``entries`` of (relative path, part, class index or -1),
    ``stats``: each file's (size, modification time in ns), and ``skipped``: what was found but cannot
    be read (broken links, FIFOs, ...)."""
    if not base.is_dir():
        raise GenclsError(f"--dataset folder:{base}: no such folder")
    entries: list[tuple[str, str, int]] = []
    skipped: list[dict] = []
    stats: dict[str, tuple[int, int]] = {}

    def files(folder: Path) -> list[str]:
        found = [(p.relative_to(base).as_posix(), st) for p, st in _files_under(folder, skipped, base)]
        stats.update((rel, (st.st_size, st.st_mtime_ns)) for rel, st in found)
        return [rel for rel, _ in found]

    lab = _layout_dir(base, "labelled")
    unlab = _layout_dir(base, "unlabelled")
    if lab is not None:
        layout = "labelled"
        classes = _class_dirs(lab)
        for i, c in enumerate(classes):
            entries += [(rel, "train", i) for rel in files(lab / c)]
        if unlab is not None:
            entries += [(rel, "unlabelled", -1) for rel in files(unlab)]
        if (base / "test").is_dir():
            for c in _class_dirs(base / "test"):
                if c not in classes:
                    raise GenclsError(f"{base / 'test' / c}: class '{c}' is not among the labelled classes "
                                      f"({', '.join(classes)})")
                entries += [(rel, "test", classes.index(c)) for rel in files(base / "test" / c)]
    else:
        layout = "classes"
        classes = _class_dirs(base)
        odd = [c for c in ("unlabelled", "unlabeled", "test") if c in classes]
        if odd:
            raise GenclsError(f"--dataset folder:{base}: there is {odd[0]}/ but no labelled/; put the labelled class "
                              f"folders in {base / 'labelled'}")
        for i, c in enumerate(classes):
            entries += [(rel, "train", i) for rel in files(base / c)]
    if len(classes) < 2:
        raise GenclsError(f"--dataset folder:{base}: found {len(classes)} class folder(s); give PATH/labelled/<class>/* "
                          "or PATH/<class>/* with at least two classes")
    counts = Counter(e[2] for e in entries if e[1] == "train")
    empty = [c for i, c in enumerate(classes) if not counts[i]]
    if empty:
        raise GenclsError(f"--dataset folder:{base}: class folder '{empty[0]}' has no files")
    return {"layout": layout, "classes": classes, "entries": entries, "stats": stats, "skipped": skipped}


def _listing_key(base: Path, listing: dict, size, channels) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, listing["layout"], listing["classes"], size, channels]).encode())
    for rel, part, label in listing["entries"]:
        size, mtime_ns = listing["stats"][rel]
        h.update(f"\0{rel}\0{part}\0{label}\0{size}\0{mtime_ns}".encode())
    for sk in listing["skipped"]:
        h.update(f"\1{sk['path']}\0{sk['reason']}".encode())
    return h.hexdigest()[:32]


def _header(path: Path) -> tuple[tuple[int, int], bool] | str:
    """((height, width), is_grayscale) from the file's header, or why it cannot be an image."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return f"too large ({im.width}x{im.height} pixels, the limit is {MAX_PIXELS})"
            gray = im.mode in GRAY_MODES or im.mode.startswith("I;16") or (im.mode == "P" and _gray_palette(im))
            try:
                orientation = im.getexif().get(ORIENTATION, 1)
            except Exception:  # noqa: BLE001 - unreadable EXIF: the decoder says whether the file is usable
                orientation = 1
            if orientation in (5, 6, 7, 8):  # decoded rotated by 90 degrees (ImageOps.exif_transpose)
                return (im.width, im.height), gray
            return (im.height, im.width), gray
    except Exception as e:  # noqa: BLE001 - whatever PIL raises, the file is skipped and reported
        return f"not a readable image ({type(e).__name__})"


def _gray_palette(im: Image.Image) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: 3 * (len(pal) // 3)]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def default_size(sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], str]:
    """The most common size if both sides are multiples of 4 in 8..64, else 32x32; and why."""
    if not sizes:
        return (32, 32), "no decodable images"
    (h, w), n = Counter(sizes).most_common(1)[0]
    if h % 4 == 0 and w % 4 == 0 and 8 <= h <= 64 and 8 <= w <= 64:
        return (h, w), f"the most common size ({n} of {len(sizes)} images)"
    return (32, 32), f"the most common size {w}x{h} is not a multiple of 4 between 8 and 64"


def _decode_all(base: Path, entries: list, size, channels) -> tuple[dict, list[dict]]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # headers only: I/O bound
        headers = list(pool.map(lambda e: _header(base / e[0]), entries))
    skipped = [{"path": e[0], "reason": h} for e, h in zip(entries, headers) if isinstance(h, str)]
    good = [(e, h) for e, h in zip(entries, headers) if not isinstance(h, str)]
    how = {}
    if size is None:
        size, how["image_size"] = default_size([h[0] for _, h in good])
    if channels is None:
        n_gray = sum(h[1] for _, h in good)
        channels = 1 if n_gray * 2 > len(good) else 3
        how["channels"] = f"{n_gray} of {len(good)} images are grayscale"
    shape = (channels, *size)

    def decode(rel: str):
        try:
            x = decode_image(base / rel, shape, invert="no", name=rel)
        except InputError as e:
            return str(e).removeprefix(f"{rel}: ")
        return (x * 255.0).round().astype(np.uint8)

    # one at a time: decode_image's bomb guard changes the (process-wide) warning filters
    arrays = [decode(e[0]) for e, _ in good]
    kept, images = [], []
    for (e, _), a in zip(good, arrays):
        if isinstance(a, str):
            skipped.append({"path": e[0], "reason": a})
        else:
            kept.append(e)
            images.append(a)
    skipped.sort(key=lambda d: d["path"])
    x = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, *shape), dtype=torch.uint8)
    return {"images": x, "labels": torch.tensor([e[2] for e in kept], dtype=torch.long),
            "parts": torch.tensor([PARTS[e[1]] for e in kept], dtype=torch.int8),
            "files": [e[0] for e in kept], "shape": list(shape), "how": how}, skipped


def _check_every_class_decoded(base: Path, listing: dict, labels: torch.Tensor, parts: torch.Tensor,
                               skipped: list[dict]) -> None:
    """A class none of whose labelled files could be decoded is an error (not a class without images)."""
    got = set(labels[parts == PARTS["train"]].tolist())
    for i, c in enumerate(listing["classes"]):
        if i not in got:
            tried = [e[0] for e in listing["entries"] if e[1] == "train" and e[2] == i]
            why = next((s for s in skipped if s["path"] == tried[0]), {"reason": "?"})["reason"]
            raise GenclsError(f"--dataset folder:{base}: class folder '{c}': none of its {len(tried)} files could be "
                              f"decoded (e.g. {tried[0]}: {why})")


def _path_fraction(rel: str) -> float:
    """A file's place in [0, 1), fixed by its relative path: ``int(sha256(path)) / 2**256``."""
    return int(hashlib.sha256(rel.encode()).hexdigest(), 16) / 2**256


def _hold_out_test(files: list[str], labels: torch.Tensor, parts: torch.Tensor,
                   rule: int = TEST_RULE) -> tuple[torch.Tensor, str]:
    """Mark about TEST_FRACTION of each class's labelled training images as test, by a hash of the
    path; and how, in words. ``rule`` (a run's ``folder_test_rule``):

    2: each file on its own: held out when ``_path_fraction(path) < TEST_FRACTION``, so adding or
       removing a file moves no other file. Two exceptions for small classes: a class of two or
       more files none of which falls under the threshold holds out the one with the smallest
       fraction (adding a file to it that has a smaller fraction holds out the new file instead,
       and the old one returns to training); a class all of whose files fall under it keeps the one
       with the largest fraction in training (a file added above the threshold sends it to test: the
       only way an existing training file becomes a test file). A class of one file holds out none.
    1: (runs trained before rule 2) the first ``round(TEST_FRACTION * n)`` of the class's n files
       sorted by the hash (one if n is 2 to 4, none for one file): adding a file can move an old
       test file into training."""
    parts = parts.clone()
    for c in labels[parts == PARTS["train"]].unique().tolist():
        ix = ((parts == PARTS["train"]) & (labels == c)).nonzero().flatten().tolist()
        if rule == 1:
            ix.sort(key=lambda i: hashlib.sha256(files[i].encode()).hexdigest())
            n = round(TEST_FRACTION * len(ix)) if len(ix) >= 5 else int(len(ix) >= 2)
            test = ix[:n]
        else:
            u = {i: _path_fraction(files[i]) for i in ix}
            test = [i for i in ix if u[i] < TEST_FRACTION]
            if not test and len(ix) >= 2:
                test = [min(ix, key=u.get)]
            if test and len(test) == len(ix):
                test.remove(max(test, key=u.get))
        parts[test] = PARTS["test"]
    pct = round(100 * TEST_FRACTION)
    if rule == 1:
        how = f"held out: {pct}% of each class's labelled images, chosen by a hash of their paths"
    else:
        how = (f"held out: each labelled image whose path hashes below {TEST_FRACTION} (about {pct}%; at least one "
               "per class of two or more), test rule 2")
    return parts, how


def _read_cache(path: Path) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["gencls"])
            tensors = {k: f.get_tensor(k) for k in ("images", "labels", "parts")}
    except Exception:  # noqa: BLE001 - a damaged cache is decoded again
        return None
    return tensors, meta


def _cache_path(root: Path, base: Path, listing: dict, size, channels) -> Path:
    """``<data root>/folder_cache/<folder and settings>-<listing>`` (no suffix)."""
    owner = hashlib.sha256(json.dumps([str(base), size, channels]).encode()).hexdigest()[:12]
    return Path(root) / "folder_cache" / f"{owner}-{_listing_key(base, listing, size, channels)}"


def _write_bytes(path: Path, data: bytes) -> None:
    from gencls.utils import atomic_write_bytes

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError:
        pass  # no cache where it cannot be written; the next run decodes again


def _write_cache(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save

    _write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata={"gencls": json.dumps(meta)}))


def _log_summary(base: Path, parts: torch.Tensor, meta: dict, log) -> None:
    c, h, w = meta["image_shape"]
    counts = {p: int((parts == i).sum()) for p, i in PARTS.items()}
    why = "; ".join(f"{k}: {v}" for k, v in meta["how"].items())
    skipped = meta["skipped"]
    log(f"folder {base}: {len(meta['classes'])} classes, {counts['train']} labelled, {counts['unlabelled']} unlabelled "
        f"and {counts['test']} test images ({meta['test']}), as {w}x{h} with {c} channel(s)"
        + (f" ({why})" if why else "") + f"; {len(skipped)} file(s) skipped" + (":" if skipped else ""))
    for s in skipped[:20]:
        log(f"  skipped {s['path']}: {s['reason']}")
    if len(skipped) > 20:
        log(f"  ... and {len(skipped) - 20} more (all in skipped_files.json of the run)")


def load_folder(path: str, split: str, root: Path, log: Callable[[str], None] = print,
                size: tuple[int, int] | None = None, channels: int | None = None, test_rule: int = TEST_RULE):
    """The ``train`` or ``test`` split of a folder dataset (see the module's docstring). Without a
    test folder, ``test_rule`` says how the test split is held out (``_hold_out_test``). The split's
    ``fingerprint`` is a hash of its files (relative path, size) in row order."""
    from gencls.data.datasets import Split

    if not path:
        raise GenclsError("--dataset folder:PATH: give the folder, e.g. folder:~/my-images")
    if test_rule not in TEST_RULES:
        raise GenclsError(f"folder test rule {test_rule!r}: one of {', '.join(map(str, TEST_RULES))}")
    base = Path(path).expanduser().resolve()
    listing = list_folder(base)
    auto = _cache_path(root, base, listing, size, channels)
    if size is None or channels is None:  # settings resolved from the data before: their cache
        try:
            pointer = json.loads(auto.with_suffix(".json").read_text())
            size, channels = size or tuple(pointer["image_size"]), channels or int(pointer["channels"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    cache = _cache_path(root, base, listing, size, channels).with_suffix(".safetensors")
    got = _read_cache(cache) if size is not None and channels is not None and cache.exists() else None
    if got is not None:  # nothing to say: the first load said it all, and predict's output stays clean
        tensors, meta = got
    else:
        log(f"folder {base}: decoding {len(listing['entries'])} files (cached afterwards in {cache.parent})")
        data, skipped = _decode_all(base, listing["entries"], size, channels)
        _check_every_class_decoded(base, listing, data["labels"], data["parts"], skipped)
        skipped = sorted(listing["skipped"] + skipped, key=lambda d: d["path"])
        # cached before any test split is held out: that depends on the run's test rule
        tensors = {"images": data["images"], "labels": data["labels"], "parts": data["parts"]}
        meta = {"folder": str(base), "layout": listing["layout"], "classes": listing["classes"],
                "files": data["files"], "skipped": skipped, "image_shape": data["shape"], "how": data["how"]}
        c, h, w = data["shape"]
        cache = _cache_path(root, base, listing, (h, w), c).with_suffix(".safetensors")
        for old in {auto, cache.with_suffix("")}:  # the folder's older caches for these settings
            for stale in old.parent.glob(old.name.split("-")[0] + "-*"):
                stale.unlink(missing_ok=True)
        if auto != cache.with_suffix(""):  # auto settings -> the resolved ones
            _write_bytes(auto.with_suffix(".json"), json.dumps({"image_size": [h, w], "channels": c}).encode())
        _write_cache(cache, tensors, meta)
    images, labels, parts = tensors["images"], tensors["labels"], tensors["parts"]
    files, skipped, classes = meta["files"], meta["skipped"], meta["classes"]
    if (parts == PARTS["test"]).any():
        test_how = "the test folder"
    else:
        parts, test_how = _hold_out_test(files, labels, parts, test_rule)
    if got is None:
        _log_summary(base, parts, {**meta, "test": test_how}, log)
    if split == "test":
        keep = parts == PARTS["test"]
    else:
        keep = parts != PARTS["test"]
    ix = keep.nonzero().flatten()
    if len(ix) == 0:
        raise GenclsError(f"folder {base}: no decodable {'test' if split == 'test' else 'training'} images")
    run_files = {
        "skipped_files.json": {"folder": str(base), "count": len(skipped), "files": skipped},
        "test_files.json": {"folder": str(base), "how": test_how,
                            "files": [{"path": files[i], "class": classes[int(labels[i])]}
                                      for i in (parts == PARTS["test"]).nonzero().flatten().tolist()]},
    }
    defaults = {"labels": "all", "val_size": 0} if meta["layout"] == "labelled" else {}
    rows = [files[i] for i in ix.tolist()]
    return Split(images[ix].contiguous(), labels[ix].contiguous(), list(classes), defaults=defaults,
                 run_files=run_files, fingerprint=fingerprint(rows, listing["stats"]))


def fingerprint(rows: list[str], stats: dict[str, tuple[int, int]]) -> str:
    """sha256 (hex) of the rows' files in order: JSON ``[[relative path, size], ...]``. Not the
    modification times: a copy (``cp -r``, ``git clone``) changes them, and the rows stay the same."""
    doc = [[rel, stats[rel][0]] for rel in rows]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
