"""A checkpoint written by format version 1 must keep loading, with the same predictions."""
import json
from pathlib import Path

import torch

import gencls

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"


def test_version_1_checkpoint_still_loads_and_predicts_the_same(mnist_test):
    run = gencls.load_run(FIXTURE)
    assert run.meta["method"] == "supervised" and run.classes == [str(i) for i in range(10)]
    expected = torch.tensor(json.loads((FIXTURE / "expected_logits.json").read_text()))
    got = run.logits(mnist_test.images[:8].float() / 255)
    assert torch.allclose(got, expected, atol=1e-5)
    doc = json.loads((FIXTURE / "checkpoints" / "best.json").read_text())
    assert doc["format_version"] == 1
    assert run.config.folder_test_rule == 1  # saved before the field: a folder's test split by the old rule
