"""The optimised training step: same numbers as the plain one, a guard without host syncs, GPU options."""
import subprocess
import sys

import pytest
import torch

import gencls
from gencls.errors import GenclsError
from gencls.methods import NonFiniteError, create_method
from gencls.nets import NoiseBank
from gencls.training.runlog import read_metrics

SHAPE = (1, 28, 28)


def _pair(hidden=(64, 32, 16)):
    torch.manual_seed(0)
    plain = create_method("improved-gan", {"fused": False, "hidden": list(hidden)}, SHAPE, 10).train()
    plain.setup(torch.rand(200, *SHAPE))
    fused = create_method("improved-gan", {"fused": True, "hidden": list(hidden)}, SHAPE, 10).train()
    fused.load_state_dict(plain.state_dict())
    fused.ema.reset(fused.disc)
    fused._noise.parallel = False  # the plain step's draws, in its order (not the two-thread noise)
    return plain, fused


def _batch(n=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.rand(2 * n, *SHAPE, generator=g))


def _same_losses(plain, fused, batch, seed, rtol, atol):
    torch.manual_seed(seed)
    lp = plain.train_step(*batch)
    torch.manual_seed(seed)
    lf = fused.train_step(*batch)
    for k in lp:
        torch.testing.assert_close(lf[k], lp[k], rtol=rtol, atol=atol)


def test_fused_step_computes_the_same_losses_gradients_and_update_as_the_plain_one():
    plain, fused = _pair()
    batch = _batch()
    _same_losses(plain, fused, batch, seed=7, rtol=1e-5, atol=1e-6)
    named = dict(plain.named_parameters())
    with_grad = 0
    for name, pf in fused.named_parameters():
        pp = named[name]
        if pp.grad is not None:
            with_grad += 1
            torch.testing.assert_close(pf.grad, pp.grad, rtol=1e-4, atol=1e-5 * float(pp.grad.abs().max()))
        torch.testing.assert_close(pf, pp, rtol=1e-5, atol=1e-6)  # after the (fused) Adam update
    assert with_grad == sum(p.requires_grad for p in plain.disc.parameters()) + len(list(plain.gen.parameters()))
    # the same random draws: a second step still agrees
    _same_losses(plain, fused, batch, seed=8, rtol=1e-4, atol=1e-5)


def test_noise_bank_draws_what_randn_like_and_rand_draw():
    x = torch.rand(7, 33)
    bank = NoiseBank()
    torch.manual_seed(3)
    a = [x + torch.randn_like(x) * 0.5, torch.rand(4, 5), x + torch.randn_like(x) * 0.5]
    torch.manual_seed(3)
    b = [bank.add_normal(x, 0.5), bank.uniform((4, 5)).clone(), bank.add_normal(x, 0.5)]
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_prefilled_noise_is_standard_normal_reproducible_and_in_order():
    """A step's noise drawn at once on two threads: N(0, 1), a function of the default
    generator's state (a resumed run draws the same), handed out in the planned order."""
    torch.set_num_threads(2)
    bank, x = NoiseBank(), torch.zeros(600, 1000)
    shapes = [(600, 1000), (600, 500), (7, 3)]

    def draw(seed):
        torch.manual_seed(seed)
        bank.prefill(shapes, x)
        return [bank.add_normal(torch.zeros(s), 1.0) for s in shapes]

    a, b = draw(1), draw(1)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    flat = torch.cat([t.flatten() for t in a])
    assert abs(float(flat.mean())) < 5e-3 and abs(float(flat.std()) - 1) < 5e-3
    first, second = flat[: len(flat) // 2], flat[len(flat) // 2:]  # the two threads' halves
    assert abs(float(torch.corrcoef(torch.stack([first[:100000], second[:100000]]))[0, 1])) < 0.02
    assert not torch.equal(draw(2)[0], a[0])
    torch.manual_seed(1)
    bank.prefill(shapes, x)
    with pytest.raises(RuntimeError, match="prefilled for shape"):
        bank.add_normal(torch.zeros(3, 3), 1.0)
    bank.parallel = False  # then prefill draws nothing and each call draws its own
    torch.manual_seed(3)
    bank.prefill(shapes, x)
    torch.manual_seed(3)
    drawn = bank.add_normal(x, 0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, x + torch.randn_like(x) * 0.5)


def test_weight_norm_function_matches_autograd():
    """The hand-written backward of (x vᵀ) g/‖v‖ + b against autograd (float64 gradcheck and fp32)."""
    from gencls.nets.layers import _WNLinearFunction

    torch.manual_seed(0)
    args = [torch.randn(5, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
            torch.rand(3, dtype=torch.float64, requires_grad=True) + 0.5,
            torch.randn(3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: _WNLinearFunction.apply(*a)[0], args)
    x, v, g, b = (t.detach().float().requires_grad_() for t in args)
    x2, v2, g2, b2 = (t.detach().clone().requires_grad_() for t in (x, v, g, b))
    y = _WNLinearFunction.apply(x, v, g, b)[0]
    ref = torch.addcmul(b2, x2 @ v2.t(), g2 / v2.norm(dim=1))
    torch.testing.assert_close(y, ref)
    dy = torch.randn_like(y)
    y.backward(dy)
    ref.backward(dy)
    for a, r in zip((x, v, g, b), (x2, v2, g2, b2)):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-6)


def test_flops_per_step_from_the_layer_shapes():
    m = create_method("improved-gan", {"hidden": [3]}, (1, 2, 2), 2)  # disc 4-3-2, gen nz 100-500-500-4
    f = m.flops_per_step(batch_size=1)
    mm_d = 2 * (4 * 3 + 3 * 2)  # one image through the discriminator
    assert f["discriminator_step"] == 3 * (mm_d + mm_d + 2 * 3 * 2)
    mm_g = 2 * (100 * 500 + 500 * 500 + 500 * 4)
    assert f["fakes"] == mm_g
    assert f["generator_step"] == 2 * mm_g + 2 * (500 * 500 + 500 * 4) + 3 * mm_d
    assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))
    big = create_method("improved-gan", {}, SHAPE, 10).flops_per_step(100)["total"]
    assert 3.7e9 < big < 3.9e9


def _nan_batch():
    x, y, u = _batch(8)
    x[0, 0, 0, 0] = float("nan")
    return x, y, u


def test_device_guard_masks_the_update_and_reports_lazily():
    _, m = _pair()
    m.guard.lazy = True
    x, y, u = _batch(8)
    m.train_step(x, y, u)  # a good step
    before = {k: v.clone() for k, v in m.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in m.opt_d.state.values()]
    m.train_step(*_nan_batch())  # fails: no exception yet (no host sync), no update applied
    m.train_step(x, y, u)  # after a "stop" failure every update is masked
    after = m.state_dict()
    for k, v in before.items():
        if k.startswith(("disc.", "gen.fc", "gen.out")):
            assert torch.equal(v, after[k]), k
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, m.opt_d.state.values()))
    with pytest.raises(NonFiniteError, match="loss_lab is not finite") as e:
        m.guard.check()
    assert e.value.steps_ago == 1  # the failed step was one step before the latest


def test_device_guard_skip_policy_counts_on_the_device():
    _, m = _pair()
    m.guard.policy, m.guard.lazy = "skip", True
    x, y, u = _batch(8)
    m.train_step(*_nan_batch())
    w = m.disc.out.v.clone()
    m.train_step(x, y, u)  # skipping does not stop later updates
    assert not torch.equal(w, m.disc.out.v)
    m.guard.check()  # "skip" never raises
    assert m.guard.skipped == 1
    m.guard.skipped = 5
    assert m.guard.skipped == 5


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_on_cpu_trains_and_is_saved(tmp_path, data_root, monkeypatch, native):
    """Trains either way; on a CPU without oneDNN's bfloat16 (AVX2 only: products about 8x slower
    than fp32, measured) the run says so in one line."""
    import gencls.training.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: native)
    out, lines = tmp_path / "bf16", []
    gencls.train(gencls.TrainConfig(method="improved-gan", labels=100, subset=600, val_size=100, epochs=1,
                                    batch_size=50, precision="bf16", threads=1, out=str(out), progress=False,
                                    tensorboard=False, sample_every=0, method_config={"hidden": [64, 32]}),
                 log=lines.append)
    rows = read_metrics(out)
    assert rows[-1]["val_error"] < 0.95 and all(torch.isfinite(torch.tensor(rows[-1][k]))
                                                  for k in ("loss_lab", "loss_unl", "loss_gen"))
    assert gencls.load_run(out).config.precision == "bf16"
    assert any("bf16 on a CPU without bfloat16 support" in s for s in lines) == (not native)


def test_generated_pixels_keep_their_gradient_under_bf16_autocast():
    """Every generator and decoder makes its images in fp32 under bf16 autocast: in bf16,
    sigmoid(x) is exactly 1 above x ~ 6.2 and its gradient 0, which collapsed the plain improved-gan
    step on --precision bf16 (the fused one scales its outputs in fp32 and escaped)."""
    from gencls.nets.autoencoder import ClassConditionalDecoder
    from gencls.nets.cifar import ConvNetGenerator
    from gencls.nets.conv import ConvGenerator
    from gencls.nets.layers import to_pixels
    from gencls.nets.mlp import MLPGenerator

    x = torch.tensor([7.0, 9.0], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.sigmoid(x.to(torch.bfloat16))
    plain.sum().backward()
    assert plain.eq(1).all() and x.grad.eq(0).all()  # the failure: bright pixels get no gradient
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = to_pixels(x.to(torch.bfloat16))
    y.sum().backward()
    assert y.dtype == torch.float32 and (y < 1).all() and (x.grad > 0).all()
    torch.testing.assert_close(y, torch.sigmoid(x.detach().to(torch.bfloat16).float()))

    torch.manual_seed(0)
    decoder = ClassConditionalDecoder((1, 28, 28), 10, 8, (32,))
    nets = {"mlp": lambda z: MLPGenerator((1, 28, 28), nz=16, hidden=32)(z),
            "conv": lambda z: ConvGenerator((1, 28, 28), nz=16, width=8)(z),
            "cifar": lambda z: ConvNetGenerator((3, 32, 32), nz=16, width=8)(z),
            "decoder": lambda z: decoder.images(torch.eye(10)[:4], z[:, :8])}
    for name, make in nets.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = make(torch.rand(4, 16))
        assert images.dtype == torch.float32, name
        assert images.min() >= 0 and images.max() <= 1, name


def test_gpu_options_are_validated(tmp_path):
    with pytest.raises(GenclsError, match="--precision fp16"):
        gencls.TrainConfig(precision="fp16").validate()
    with pytest.raises(GenclsError, match="--cuda-graphs needs a CUDA device"):
        gencls.TrainConfig(cuda_graphs=True, device="cpu").validate()
    proc = subprocess.run([sys.executable, "-m", "gencls", "train", "--out", str(tmp_path / "x"), "--device", "cpu",
                           "--cuda-graphs"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--cuda-graphs needs a CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_device_guard_masks_the_update_without_a_sync():
    _, m = _pair()
    m = m.cuda()
    m.guard.lazy = True
    x, y, u = (t.cuda() for t in _batch(8))
    m.train_step(x, y, u)
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("disc.")}
    xn, yn, un = (t.cuda() for t in _nan_batch())
    m.train_step(xn, yn, un)
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with pytest.raises(NonFiniteError, match="loss_lab is not finite"):
        m.guard.check()


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_trains_counts_and_skips(precision):
    from gencls.training.trainer import _GraphedStep

    _, m = _pair()
    m = m.cuda()
    m.guard.policy, m.guard.lazy = "skip", True
    x_all, y_all = torch.rand(400, *SHAPE, device="cuda"), torch.randint(0, 10, (400,), device="cuda")
    x_all[399, 0, 0, 0] = float("nan")  # one poisoned image
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)) if precision == "bf16" \
        else __import__("contextlib").nullcontext
    step = _GraphedStep(m, x_all, y_all, autocast)
    g = torch.Generator().manual_seed(0)
    w0 = m.disc.out.v.detach().clone()  # a plain clone would keep an AccumulateGrad node alive
    for i in range(12):
        li = torch.randint(0, 399, (8,), generator=g).cuda()
        if i == 9:  # a replayed step with the poisoned image: dropped on the device
            li[0] = 399
        ui = torch.randint(0, 399, (16,), generator=g).cuda()
        losses = step(li, ui)
        assert set(losses) == {"loss_lab", "loss_unl", "loss_gen", "train_err"}
    assert step.graph is not None  # steps 4.. were replays
    assert m.guard.skipped == 1 and m.ema.updates == 12
    assert not torch.equal(w0, m.disc.out.v) and torch.isfinite(m.disc.out.v).all()
    assert torch.isfinite(losses["loss_gen"]).all()


def test_state_moves_between_the_plain_and_the_fused_variant():
    """A checkpoint of one variant loads into the other; each keeps its own kind of Adam."""
    plain, fused = _pair(hidden=(32, 16))
    x, y, u = _batch(8)
    plain.train_step(x, y, u)
    fused.train_step(x, y, u)
    fused.load_state(plain.state())
    fused.train_step(x, y, u)
    assert fused.opt_d.param_groups[0]["fused"] and int(fused.opt_d.state[fused.disc.out.v]["step"]) == 2
    plain.load_state(fused.state())
    plain.train_step(x, y, u)
    assert not plain.opt_d.param_groups[0]["fused"] and int(plain.opt_d.state[plain.disc.out.v]["step"]) == 3


class _NoHostReads:
    """Every Python-level way to read a tensor's value on the host raises inside (``.item()``,
    ``float()``, ``bool()``, ``.tolist()``, ``.cpu()``, ...): on a GPU each is a sync that stalls
    the launch queue and makes a step uncapturable as a CUDA graph. A CPU check of the GPU path."""

    NAMES = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            def refuse(t, *a, _n=n, **k):
                raise AssertionError(f"host read of a tensor: Tensor.{_n}")
            setattr(torch.Tensor, n, refuse)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_reads_guard_catches_them():
    with pytest.raises(AssertionError, match="Tensor.item"), _NoHostReads():
        torch.ones(()).item()
    with pytest.raises(AssertionError, match="Tensor.__bool__"), _NoHostReads():
        if torch.ones(()) > 0:
            pass
    assert torch.ones(()).item() == 1.0  # restored


def test_optimised_step_never_reads_a_tensor_on_the_host():
    """The fused improved-gan step (what ``--cuda-graphs`` captures) and the stacked seeds' step
    run with a lazy guard and make no host read: they queue work without waiting for it."""
    from gencls.methods import StepGuard

    _, m = _pair()
    m.guard.lazy = True
    x, y, u = _batch(8)
    m.train_step(x, y, u)  # the first step creates the optimizer state
    with _NoHostReads():
        for _ in range(2):
            m.train_step(x, y, u)
    m.guard.check()
    torch.manual_seed(0)
    seeds = [create_method("improved-gan", {"hidden": [32, 16]}, SHAPE, 10).train() for _ in range(2)]
    stack = type(seeds[0]).stack(seeds, StepGuard(lazy=True))
    xs, ys, us = (torch.stack([t, t]) for t in (x, y, u))
    stack.train_step(xs, ys, us)
    with _NoHostReads():
        for _ in range(2):
            stack.train_step(xs, ys, us)


def test_training_images_stay_uint8_and_convert_per_batch():
    """The trainer keeps the dataset as uint8 (a quarter of float32's memory; on the CPU the
    dataset's own tensor, no copy) and converts gathered rows only, to the same numbers."""
    from gencls.training.trainer import DeviceImages

    imgs = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    d = DeviceImages(imgs, torch.device("cpu"))
    assert d.images.dtype == torch.uint8 and d.images.data_ptr() == imgs.data_ptr() and len(d) == 10
    full = imgs.float().div_(255)
    idx = torch.tensor([3, 1, 3])
    assert d[idx].dtype == torch.float32 and torch.equal(d[idx], full[idx])
    seeds_idx = torch.tensor([[0, 1], [9, 3]])  # (seeds, batch): the stacked step's gather
    assert torch.equal(d[seeds_idx], full[seeds_idx])
    with pytest.raises(TypeError, match="uint8"):
        DeviceImages(full, torch.device("cpu"))


def test_openmp_spin_count_is_set_unless_the_user_chose_one():
    """``import gencls`` sets GOMP_SPINCOUNT=1000 (benchmarks/contention.py: the same speed alone,
    a fair 2x instead of 5-47x slower beside a second training), unless the user set it or
    OMP_WAIT_POLICY."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, gencls; print(os.environ.get('GOMP_SPINCOUNT'))"

    def spin(**extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert spin() == "1000"
    assert spin(GOMP_SPINCOUNT="5") == "5"
    assert spin(OMP_WAIT_POLICY="ACTIVE") == "None"


def test_benchmark_scripts_compile_and_show_their_help():
    """The benchmarks are not run by the tests (they take minutes); each must at least compile and
    answer --help (an import error or a broken edit shows here, not in a GPU session)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    for script in sorted(root.glob("*.py")):
        compile(script.read_text(), str(script), "exec")
    for name in ("speed.py", "seeds_speed.py", "methods_speed.py", "contention.py", "ddp_speed.py"):
        out = subprocess.run([sys.executable, str(root / name), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout, (name, out.stderr[-500:])
