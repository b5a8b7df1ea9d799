"""Checkpoints: safetensors for tensors, JSON for everything else. Never pickles.

A checkpoint is one ``.safetensors`` file whose header metadata holds the JSON document
(``gencls`` key), so the tensors and their description are written and renamed atomically
together; a readable ``.json`` copy of the metadata is written beside it.

Nested state (module state dicts, optimizer state dicts, plain values) is flattened: every
tensor goes into the safetensors file under its path (``a/b/0/c``), and the JSON keeps the
structure with ``{"__tensor__": path}`` in its place.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from gencls import __version__
from gencls.errors import InputError
from gencls.utils import atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 1
_PREFIX = re.compile(r"(^|(?<=/)|(?<=\.))(module\.|_orig_mod\.)")


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, tensors, f"{path}/{k}" if path else str(k))] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, tensors, f"{path}/{i}" if path else str(i)) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes from keys."""
    return {_PREFIX.sub("", k) if isinstance(k, str) else k: v for k, v in state_dict.items()}


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``state`` (nested tensors and values) and ``meta`` (plain JSON) atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(state, tensors)
    doc = {"format_version": FORMAT_VERSION, "gencls_version": __version__, "meta": meta, "state": structure}
    blob = st_save(tensors, metadata={"gencls": json.dumps(doc)})
    atomic_write_bytes(path, blob)
    atomic_write_json(path.with_suffix(".json"), {k: v for k, v in doc.items() if k != "state"})


def read_checkpoint_doc(path: str | Path) -> dict[str, Any]:
    """A checkpoint's JSON document (format, version, meta, state structure) from its header
    alone, without reading the tensors. It is written in one file with them, so it is the
    truth about them; the ``.json`` copy beside it can lag (a kill between the two writes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 2**30:
                raise ValueError(f"header length {n}")
            doc = json.loads(json.loads(f.read(n))["__metadata__"]["gencls"])
        if not isinstance(doc, dict):
            raise TypeError("metadata is not an object")
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a gencls checkpoint ({type(e).__name__}: {e})") from None
    return doc


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (epoch, step, best, ...) from its own header (see ``read_checkpoint_doc``)."""
    meta = read_checkpoint_doc(path).get("meta", {})
    return meta if isinstance(meta, dict) else {}


def repair_json_copies(ck_dir: str | Path) -> list[Path]:
    """Rewrite each checkpoint's ``.json`` copy that does not say what its ``.safetensors`` file
    holds (a kill between the two writes leaves the previous one's). Returns the files rewritten."""
    fixed = []
    for st in sorted(Path(ck_dir).glob("*.safetensors")):
        try:
            doc = read_checkpoint_doc(st)
        except InputError:
            continue
        copy = {k: v for k, v in doc.items() if k != "state"}
        js = st.with_suffix(".json")
        try:
            if json.loads(js.read_text()) == copy:
                continue
        except (OSError, ValueError):
            pass
        atomic_write_json(js, copy)
        fixed.append(js)
    return fixed


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (state, meta). Raises ``InputError`` naming the file for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    return parse_checkpoint(path.read_bytes(), path)


def parse_checkpoint(blob: bytes, path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``load_checkpoint`` of a file's bytes (read once and shared, e.g. by data-parallel ranks)."""
    try:
        tensors = st_load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        doc = json.loads(header["__metadata__"]["gencls"])
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a gencls checkpoint ({type(e).__name__}: {e})") from None
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {version!r} is newer than this gencls "
                         f"({__version__}) understands ({FORMAT_VERSION}); upgrade gencls")
    try:
        state = unflatten(doc["state"], tensors)
    except KeyError as e:
        raise InputError(f"{path}: checkpoint refers to a missing tensor {e}") from None
    return state, doc.get("meta", {})


def validate_modules(method, modules: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """Check a checkpoint's module tensors against the method's networks (after stripping
    DDP/compile prefixes); raises ``InputError`` naming the file and the first mismatch."""
    modules = strip_prefixes(modules)
    expected = method.state_dict()
    missing, extra = sorted(set(expected) - set(modules)), sorted(set(modules) - set(expected))
    if missing or extra:
        raise InputError(f"{path}: tensors do not match method {method.name}: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in expected.items():
        if v.shape != modules[k].shape or v.dtype != modules[k].dtype:
            raise InputError(f"{path}: tensor {k} is {tuple(modules[k].shape)} {modules[k].dtype}, "
                             f"method {method.name} needs {tuple(v.shape)} {v.dtype}")
    return modules


def checkpoint_bytes_estimate(method) -> int:
    """Bytes of one checkpoint: the networks, plus optimizer moments (two per trained parameter)."""
    params = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    return params + 2 * trained + 2**16
