"""Several seeds in one process (``gencls train --seeds``): in turn they give exactly the numbers of
separate runs; stacked (one batched model) the same computation per seed; every seed folder is a
complete run; resume, the summary and the errors a user can cause."""
import json
import subprocess
import sys

import pytest
import torch

import gencls
from gencls.methods import StepGuard, create_method
from gencls.training.runlog import read_metrics

TIMING = ("epoch_seconds", "images_per_second")


def cfg(tmp_path, name, **kw):
    base = dict(method="supervised", dataset="mnist", labels=100, val_size=200, subset=1200, epochs=2,
                batch_size=50, out=str(tmp_path / name), progress=False, tensorboard=False, sample_every=0,
                device="cpu")
    base.update(kw)
    return gencls.TrainConfig(**base)


def rows(run, drop=("seed",)):
    return [{k: v for k, v in r.items() if k not in TIMING + drop} for r in read_metrics(run)]


def test_seeds_in_turn_equal_separate_runs(tmp_path, data_root, mnist_test):
    out = gencls.train(cfg(tmp_path, "multi", seeds=[1, 2], stack_seeds="off"), log=lambda s: None)
    single = gencls.train(cfg(tmp_path, "single", seed=2, data_seed=2), log=lambda s: None)
    assert rows(out / "seed-2") == rows(single)  # every loss, error and step count
    assert [r["seed"] for r in read_metrics(out / "seed-2")] == [2, 2]
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(gencls.load_run(out / "seed-2").logits(x), gencls.load_run(single).logits(x))
    # each seed folder is a complete run: its own split (data seed = seed), config, checkpoints
    s1 = json.loads((out / "seed-1" / "split.json").read_text())
    s2 = json.loads((out / "seed-2" / "split.json").read_text())
    assert (s1["data_seed"], s2["data_seed"]) == (1, 2) and s1["labelled"] != s2["labelled"]
    assert json.loads((out / "seed-1" / "config.json").read_text())["seed"] == 1
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2] and [r["run"] for r in summary["results"]] == ["seed-1", "seed-2"]
    errs = [r["best_val_error"] for r in summary["results"]]
    assert summary["best_val_error_percent"]["mean"] == pytest.approx(100 * sum(errs) / 2)
    with pytest.raises(gencls.GenclsError, match="one run per seed"):
        gencls.load_run(out)
    # the seeds as one ensemble: the mean of their class probabilities on the test images, by hand
    ev = gencls.evaluate_seeds(out, log=lambda s: None)
    x, y = mnist_test.images.float().div(255), mnist_test.labels
    p = sum(gencls.load_run(out / f"seed-{s}").predict_proba(x) for s in (1, 2)) / 2
    ens = ev["ensemble"]
    assert ens["error_percent"] == pytest.approx(100 * float((p.argmax(1) != y).float().mean()))
    assert ens["nll"] == pytest.approx(float(-p[torch.arange(len(y)), y].log().mean()), rel=1e-4)
    assert ens["seeds"] == 2 and ens["n"] == len(y) == 10000
    # each seed drew its own 100 labels (rows of its subset): the ensemble rests on their union
    union = {s["subset"][i] for s in (s1, s2) for i in s["labelled"]}
    assert ens["labelled_images"] == len(union) > 100 and ens["same_labelled_images"] is False
    assert f"rests on {len(union)} distinct labelled images, not 100" in gencls.api.describe_ensemble(ens, 100)
    assert "ensemble" not in gencls.evaluate_seeds(out, split="val", write=False, log=lambda s: None)
    # the same ensemble loaded to classify: predict, its OOD score and threshold (on seed-1's validation split)
    ens = gencls.load_ensemble(out)
    assert isinstance(ens, gencls.Ensemble) and ens.meta["seeds"] == ["seed-1", "seed-2"]
    torch.testing.assert_close(ens.predict_proba(x[:50]), p[:50])
    from PIL import Image
    Image.fromarray(mnist_test.images[0, 0].numpy()).save(tmp_path / "digit.png")
    [pred] = gencls.predict(ens, [tmp_path / "digit.png"], top_k=10)
    seeds = [gencls.load_run(out / f"seed-{s}") for s in (1, 2)]
    want = sum(r.predict_proba(x[:1]) for r in seeds)[0] / 2
    assert pred.label == ens.classes[int(want.argmax())] and pred.probability == pytest.approx(float(want.max()), abs=1e-6)
    assert pred.ood_score == pytest.approx(float(sum(r.ood_scores(x[:1]) for r in seeds)) / 2, rel=1e-5)
    cal = json.loads((out / "ood.json").read_text())
    assert cal["epoch"] == ens.meta["epoch"] and isinstance(cal["threshold"], float) and pred.ood_flag is not None
    assert gencls.predict(out, [tmp_path / "digit.png"])[0].label == pred.label  # a path to the folder works too
    with pytest.raises(gencls.GenclsError, match="generate takes one run, not an ensemble"):
        gencls.generate(ens, n=4)
    with pytest.raises(gencls.GenclsError, match="evaluate_seeds"):
        gencls.evaluate(ens)


def test_seeds_share_one_split_when_data_seed_is_given(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "m", seeds=[3, 4], data_seed=7, epochs=1), log=lambda s: None)
    s3, s4 = (json.loads((out / f"seed-{s}" / "split.json").read_text()) for s in (3, 4))
    assert s3 == s4 and s3["data_seed"] == 7
    ens = gencls.evaluate_seeds(out, write=False, log=lambda s: None)["ensemble"]
    assert ens["labelled_images"] == 100 and ens["same_labelled_images"] is True
    assert "every seed trained on the same 100 labelled images" in gencls.api.describe_ensemble(ens, 100)


def test_seeds_resume_equals_uninterrupted(tmp_path, data_root):
    full = gencls.train(cfg(tmp_path, "full", seeds=[1, 2], epochs=3), log=lambda s: None)
    part = gencls.train(cfg(tmp_path, "part", seeds=[1, 2], epochs=1), log=lambda s: None)
    gencls.train({"out": str(part), "epochs": 3}, resume=True, log=lambda s: None)
    for s in (1, 2):
        assert rows(full / f"seed-{s}") == rows(part / f"seed-{s}")
    assert json.loads((part / "seeds.json").read_text())["results"] == json.loads((full / "seeds.json").read_text())["results"]


def test_a_kill_while_the_seeds_checkpoint_leaves_them_at_one_point(tmp_path, data_root, monkeypatch):
    """The seeds' "last" checkpoints are committed together: killed while seed 2 writes its
    epoch-2 checkpoint, both resume from epoch 1 and end as an uninterrupted run."""
    import gencls.training.trainer as trainer

    full = gencls.train(cfg(tmp_path, "full", seeds=[1, 2], epochs=3), log=lambda s: None)
    real_save = trainer.save_checkpoint

    def killed(path, state, meta):
        if meta["epoch"] == 2 and "seed-2" in str(path):
            raise KeyboardInterrupt  # the process dies here: seed 1 has written its epoch-2 checkpoint
        return real_save(path, state, meta)

    monkeypatch.setattr(trainer, "save_checkpoint", killed)
    part = tmp_path / "part"
    with pytest.raises(gencls.GenclsError):
        gencls.train(cfg(tmp_path, "part", seeds=[1, 2], epochs=3), log=lambda s: None)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    assert (part / "seed-1" / "checkpoints" / "last.next.safetensors").exists()  # written, not committed
    gencls.train({"out": str(part)}, resume=True, log=lambda s: None)
    for s in (1, 2):
        assert rows(full / f"seed-{s}") == rows(part / f"seed-{s}")
        assert not (part / f"seed-{s}" / "checkpoints" / "last.next.safetensors").exists()


def _improved_gans(n_seeds, device="cpu"):
    methods = []
    for s in range(n_seeds):
        torch.manual_seed(s)
        m = create_method("improved-gan", {"hidden": [64, 32]}, (1, 28, 28), 10).to(device)
        m.train()
        m.setup(torch.rand(50, 1, 28, 28, device=device))
        for module in m.disc.modules():  # no noise: both sides must see the same numbers
            if hasattr(module, "sigma"):
                module.sigma = 0.0
        methods.append(m)
    return methods


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_stacked_improved_gan_step_equals_separate_steps(device):
    """Three seeds as one batched model take the same steps as three separate models: losses,
    weights, Adam moments and EMA weights after three steps (the generator's inputs are the same)."""
    S, B = 3, 8
    separate, stacked = _improved_gans(S, device), _improved_gans(S, device)
    stack = type(stacked[0]).stack(stacked, StepGuard())
    torch.manual_seed(5)
    x_lab, y_lab, x_unl = (torch.rand(S, B, 1, 28, 28, device=device), torch.randint(0, 10, (S, B), device=device),
                           torch.rand(S, 2 * B, 1, 28, 28, device=device))
    for step in range(3):
        torch.manual_seed(100 + step)
        z_fake, z_gen = (torch.rand(S, B, 100, device=device),
                         torch.rand(S, B, 100, device=device))  # the stacked step's draws, in its order
        torch.manual_seed(100 + step)
        out = stack.train_step(x_lab, y_lab, x_unl)
        for s, m in enumerate(separate):
            queue = [z_fake[s], z_gen[s]]
            m._noise.uniform = lambda shape, device=None, q=queue: q.pop(0)
            ref = m.train_step(x_lab[s], y_lab[s], x_unl[s])
            for k, v in ref.items():
                torch.testing.assert_close(out[k][s], v, rtol=1e-4, atol=1e-5)
    for a, b in zip(separate, stacked):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-4, atol=1e-5)
        for opt in ("opt_d", "opt_g"):
            sa, sb = getattr(a, opt).state_dict()["state"], getattr(b, opt).state_dict()["state"]
            for i in sa:  # tolerance on the tensor's scale: its small entries carry the batched products'
                # other rounding through three steps (seen on an H100 machine's CPU, torch 2.11: 1.4e-6 at
                # entries of 5e-3 where atol 1e-7 was asked; a wrong gradient differs by its own size)
                ref = sa[i]["exp_avg"]
                torch.testing.assert_close(sb[i]["exp_avg"], ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())
                assert float(sb[i]["step"]) == float(sa[i]["step"]) == 3
        assert b.ema.updates == a.ema.updates == 3


def test_stacked_guard_checks_and_names_each_seed():
    """The gradient norm is checked per seed, not over all seeds together; one seed's NaN stops
    the stacked step and the error names that seed (policy "stop")."""
    from gencls.methods import NonFiniteError

    def norms_step(max_grad_norm):  # two seeds stacked: gradient norms 3 and 4 (together 5)
        w = torch.nn.Parameter(torch.zeros(2, 2))
        w.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
        guard = StepGuard(max_grad_norm=max_grad_norm, lazy=True)
        guard.step(torch.optim.Adam([w], fused=True), {"loss": torch.tensor([1.0, 2.0])}, ["seed 7", "seed 9"])
        guard.check()

    norms_step(4.5)  # each seed's norm is below the limit (the joint norm, 5, is not)
    with pytest.raises(NonFiniteError, match=r"gradient norm of seed 9 \(the step on loss\) exploded \(4\)"):
        norms_step(3.5)

    S, B = 2, 8
    methods = _improved_gans(S)
    guard = StepGuard(lazy=True)
    stack = type(methods[0]).stack(methods, guard)
    stack.seed_names = ["seed 7", "seed 9"]
    x_lab, y_lab, x_unl = torch.rand(S, B, 1, 28, 28), torch.randint(0, 10, (S, B)), torch.rand(S, 2 * B, 1, 28, 28)
    stack.train_step(x_lab, y_lab, x_unl)
    guard.check()
    x_lab[1, 0, 0, 0, 0] = float("nan")
    stack.train_step(x_lab, y_lab, x_unl)
    with pytest.raises(NonFiniteError, match="loss_lab of seed 9 is not finite"):
        guard.check()


def test_stacked_seeds_train_and_resume_exactly(tmp_path, data_root):
    kw = dict(method="improved-gan", seeds=[1, 2], stack_seeds="on", subset=2000, batch_size=100)
    full = gencls.train(cfg(tmp_path, "full", epochs=2, **kw), log=lambda s: None)
    part = gencls.train(cfg(tmp_path, "part", epochs=1, **kw), log=lambda s: None)
    gencls.train({"out": str(part), "epochs": 2}, resume=True, log=lambda s: None)
    x = torch.rand(8, 1, 28, 28)
    for s in (1, 2):
        r = read_metrics(full / f"seed-{s}")
        assert r[-1]["best_val_error"] < 0.6  # it learns (chance: 90 %)
        assert rows(full / f"seed-{s}") == rows(part / f"seed-{s}")  # resume is exact, stacked too
        run = gencls.load_run(full / f"seed-{s}", which="last")
        assert torch.equal(run.logits(x), gencls.load_run(part / f"seed-{s}", which="last").logits(x))
    # the seeds are independent models
    a, b = (gencls.load_run(full / f"seed-{s}", which="last").logits(x) for s in (1, 2))
    assert not torch.allclose(a, b)
    # a stacked seed's folder resumes alone, as an ordinary run
    gencls.train({"out": str(full / "seed-1"), "epochs": 3}, resume=True, log=lambda s: None)
    assert len(read_metrics(full / "seed-1")) == 3


def test_stack_on_refused_for_a_method_without_a_batched_step(tmp_path, data_root):
    with pytest.raises(gencls.GenclsError, match="no batched step"):
        gencls.train(cfg(tmp_path, "x", seeds=[1, 2], stack_seeds="on", epochs=1), log=lambda s: None)


def test_eval_every_validates_and_checkpoints_every_n_epochs(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "e", epochs=3, eval_every=2), log=lambda s: None)
    vals = [r["val_error"] for r in read_metrics(out)]
    assert vals[0] is None and vals[1] is not None and vals[2] is not None  # epoch 2 and the last
    assert json.loads((out / "checkpoints" / "last.json").read_text())["meta"]["epoch"] == 3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gencls", *args], capture_output=True, text=True, timeout=300)


def test_cli_seeds(tmp_path, data_root):
    out = tmp_path / "c"
    r = cli("train", "--method", "supervised", "--seeds", "1-2", "--subset", "1200", "--val-size", "200",
            "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--out", str(out), "--no-progress",
            "--no-tensorboard", "--sample-every", "0")
    assert r.returncode == 0, r.stderr
    assert "seed-S" in r.stdout and "mean" in r.stdout + r.stderr
    assert (out / "seed-1" / "checkpoints" / "best.safetensors").exists()
    # evaluate OUT: every seed (each its own eval.json), then mean ± sample std over the seeds
    r = cli("evaluate", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "eval.json").read_text())
    errors = [json.loads((out / f"seed-{s}" / "eval.json").read_text())["error_percent"] for s in (1, 2)]
    assert [summary["seeds"][f"seed-{s}"]["error_percent"] for s in (1, 2)] == errors
    e = summary["error_percent"]
    assert e["n"] == 2 and e["mean"] == pytest.approx(sum(errors) / 2)
    assert e["std"] == pytest.approx(abs(errors[0] - errors[1]) / 2 ** 0.5)  # n - 1
    assert f"error {e['mean']:.2f} ± {e['std']:.2f}% (mean ± sample std)" in r.stdout
    assert f"test error {summary['ensemble']['error_percent']:.2f}%; rests on" in r.stdout
    r = cli("predict", str(out), str(out / "seed-1" / "config.json"))  # the seeds as one ensemble
    assert r.returncode == 1 and "an ensemble of 2 seeds (seed-1, seed-2)" in r.stderr and "not a readable image" in r.stdout
    r = cli("generate", str(out), "--out", str(tmp_path / "g.png"))  # one model is needed here
    assert r.returncode == 2 and "one run per seed" in r.stderr and "Traceback" not in r.stderr
    r = cli("evaluate", str(out / "seed-2"), "--split", "val")
    assert r.returncode == 0, r.stderr
    (out / "seed-2" / "checkpoints" / "best.safetensors").unlink()
    r = cli("evaluate", str(out))
    assert r.returncode == 2 and "seed-2 not trained yet" in r.stderr and "Traceback" not in r.stderr
    for bad in ("1,1", "x", "3-"):
        r = cli("train", "--seeds", bad, "--out", str(tmp_path / "bad"))
        assert r.returncode == 2 and "--seeds" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_parse_seeds_ranges_and_limits():
    from gencls.config import parse_seeds

    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    with pytest.raises(gencls.GenclsError, match="at most 1000 seeds"):
        parse_seeds("0-2147483647")  # refused before the list is built
    with pytest.raises(gencls.GenclsError, match="distinct"):
        parse_seeds("1,1")


def test_grads_into_gives_fused_adam_gradients_in_the_parameters_layout():
    """autograd can hand back a transposed gradient (vmap does for the stacked generator);
    PyTorch 2.14's fused CPU Adam then silently reads it in the wrong order. grads_into fixes the layout."""
    from gencls.methods import Method

    c = torch.arange(12.0).view(4, 3) - 5.5
    w = torch.nn.Parameter(torch.zeros(3, 4))
    assert not torch.autograd.grad((w.t() * c).sum(), [w])[0].is_contiguous()  # the hazard exists
    Method.grads_into((w.t() * c).sum(), [w])
    assert w.grad.stride() == w.stride()
    torch.optim.Adam([w], lr=1.0, fused=True).step()
    assert torch.equal(w.detach().sign(), -c.t().sign())  # each weight moved against its own gradient


def test_stack_on_refused_before_the_run_folder_is_written(tmp_path, data_root):
    """The refusal is a user mistake like any other: nothing is written, so the corrected command
    runs as given (no --overwrite), and a refused resume leaves the run's settings as they were."""
    out = tmp_path / "x"
    with pytest.raises(gencls.GenclsError, match="no batched step"):
        gencls.train(cfg(tmp_path, "x", seeds=[1, 2], stack_seeds="on", epochs=1), log=lambda s: None)
    assert not out.exists()
    gencls.train(cfg(tmp_path, "x", seeds=[1, 2], stack_seeds="off", epochs=1), log=lambda s: None)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")}
    with pytest.raises(gencls.GenclsError, match="no batched step"):
        gencls.train({"out": str(out), "epochs": 2, "stack_seeds": "on"}, resume=True, log=lambda s: None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")} == before
    gencls.train({"out": str(out), "epochs": 2}, resume=True, log=lambda s: None)  # still "off": it trains on
    assert [r["epoch"] for r in read_metrics(out / "seed-1")] == [1, 2]


def test_seeds_resume_accepts_an_unchanged_setting_the_data_filled_in(tmp_path, data_root):
    """seeds.json keeps the settings as given (labels, image size unset: the data fills them in per
    seed); on --resume the same value given explicitly is not a change, as for a single run."""
    out = gencls.train(cfg(tmp_path, "m", seeds=[1, 2], epochs=1, labels=None, method_config={"hidden": [32]}),
                       log=lambda s: None)
    gencls.train({"out": str(out), "epochs": 2, "labels": 100, "image_size": "28"}, resume=True, log=lambda s: None)
    assert [r["epoch"] for r in read_metrics(out / "seed-2")] == [1, 2]
    for bad in ({"labels": 50}, {"image_size": "32"}, {"seed": 7}):
        with pytest.raises(gencls.GenclsError, match=f"{next(iter(bad))} cannot change"):
            gencls.train({"out": str(out), **bad}, resume=True, log=lambda s: None)
