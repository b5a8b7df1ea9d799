"""Checkpoint files: safetensors + JSON only, atomic, prefix-tolerant, clear errors."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gencls
from gencls.errors import InputError
from gencls.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, strip_prefixes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ck") / "run"
    gencls.train(gencls.TrainConfig(method="improved-gan", labels=100, val_size=200, subset=1000, epochs=1,
                                    batch_size=50, out=str(out), progress=False, tensorboard=False, device="cpu"))
    return out


def test_nested_state_round_trip(tmp_path):
    state = {"a": torch.arange(3.0), "b": {0: torch.ones(2, 2), 1: [1, 2.5, None, "x"]}, "c": (True, 3)}
    save_checkpoint(tmp_path / "s.safetensors", state, {"k": "v"})
    got, meta = load_checkpoint(tmp_path / "s.safetensors")
    assert meta == {"k": "v"}
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"][0], state["b"][0])
    assert got["b"][1] == [1, 2.5, None, "x"] and got["c"] == [True, 3]
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["meta"] == {"k": "v"}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_strip_prefixes():
    sd = {"module.disc.w": 1, "_orig_mod.gen.b": 2, "disc.module.x": 3, "modulex.y": 4}
    assert strip_prefixes(sd) == {"disc.w": 1, "gen.b": 2, "disc.x": 3, "modulex.y": 4}


def _rewrite(src: Path, dst: Path, edit_doc=None, edit_tensors=None):
    tensors = load_file(str(src))
    header_len = int.from_bytes(src.read_bytes()[:8], "little")
    doc = json.loads(json.loads(src.read_bytes()[8:8 + header_len])["__metadata__"]["gencls"])
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata={"gencls": json.dumps(doc)})


def test_ddp_and_compile_prefixes_load(run_dir, tmp_path):
    src = run_dir / "checkpoints" / "best.safetensors"
    (tmp_path / "checkpoints").mkdir()
    dst = tmp_path / "checkpoints" / "best.safetensors"

    def add_prefix(doc):
        pairs = doc["state"]["__dict__"][0][1]["__dict__"][0][1]["__dict__"]  # state/method/modules
        for pair in pairs:
            pair[0] = "module." + pair[0] if pair[0].startswith("disc") else "_orig_mod." + pair[0]
    _rewrite(src, dst, edit_doc=add_prefix)
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(gencls.load_run(run_dir).logits(x), gencls.load_run(dst).logits(x))


def test_newer_format_and_garbage_and_mismatch_are_clear_errors(run_dir, tmp_path):
    src = run_dir / "checkpoints" / "best.safetensors"
    newer = tmp_path / "newer.safetensors"
    _rewrite(src, newer, edit_doc=lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(InputError, match="newer"):
        load_checkpoint(newer)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="garbage.safetensors"):
        load_checkpoint(garbage)

    def shrink(tensors):
        key = next(k for k in tensors if k.endswith("disc.out.b"))
        tensors[key] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    _rewrite(src, bad, edit_tensors=shrink)
    with pytest.raises(InputError, match="disc.out.b"):
        gencls.load_run(bad)


def test_no_pickle_loading_in_the_package():
    pkg = Path(gencls.__file__).parent
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"torch\.load\(", text), f
        assert not re.search(r"pickle\.loads?\(", text), f  # only the numpy-only unpickler class in sources.py
