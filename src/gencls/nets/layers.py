"""Network blocks shared by methods."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise in training mode; identity in eval mode."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + torch.randn_like(x) * self.sigma
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) as relu(x) + log(1 + e^-|x|): on the CPU about 3x faster forward and backward
    than ``F.softplus``, whose ``log1p`` is not vectorised (differs by < 1e-6; for x < -17 it
    gives 0 instead of e^x < 4e-8). On CUDA, where one kernel beats five, it is ``F.softplus``."""
    if x.is_cuda:
        return F.softplus(x)
    return x.relu() + x.abs().neg_().exp().add(1).log()


def to_pixels(logits: torch.Tensor) -> torch.Tensor:
    """Generated images in [0, 1]: ``sigmoid(logits)`` computed in fp32, also under bf16 autocast.

    In bf16, sigmoid(x) rounds to exactly 1 for x above about 6.2 (bf16's step below 1 is 2^-8),
    and its gradient y(1 - y) is then 0: every bright pixel stops learning. The plain improved-gan
    step under ``--precision bf16`` collapsed so (the discriminator won: loss_unl 0.0004, loss_gen
    65 at the fourth MNIST epoch; fp32 and this: 0.1, 3-6). Autocast keeps sigmoid in the input's
    dtype, so the cast is here, once, for every generator and decoder."""
    return torch.sigmoid(logits.float())


class Softplus(nn.Module):
    """``nn.Softplus()`` computed by ``softplus``: the same function, about 3x faster on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus(x)


class NoiseBank:
    """Preallocated random buffers, refilled in place each use (``normal_``/``uniform_``).

    ``add_normal(x, sigma)`` is ``x + sigma * randn_like(x)`` and ``uniform(shape)`` is
    ``torch.rand(shape)``: the same draws from the same generator in the same order, without a
    new random tensor each call. A buffer is never saved for backward (addition does not keep
    its inputs), so refilling it later is safe.

    ``prefill(shapes, like)`` draws a whole step's Gaussian noise at once, in the order
    ``add_normal`` will ask for it. On a CPU with more than one thread it draws the two halves on
    two threads (PyTorch's CPU generator is sequential, so one core would idle): the first half
    from the default generator, the second from a generator seeded from it, so the noise is still
    a function of the default generator's state (a resumed run draws the same) and has the same
    distribution; the individual numbers differ from per-call drawing. ``parallel = False``, a
    CUDA device or one thread: ``prefill`` does nothing and each ``add_normal`` draws its own.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._planned: list[torch.Tensor] = []
        self._generator: torch.Generator | None = None
        self._worker = None
        self.parallel = True

    def _get(self, kind: str, shape, like: torch.Tensor | None = None, device=None) -> torch.Tensor:
        dtype = like.dtype if like is not None else torch.float32
        device = like.device if like is not None else device
        key = (kind, tuple(shape), dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def prefill(self, shapes: list[tuple[int, ...]], like: torch.Tensor) -> None:
        self._planned = []
        if not (self.parallel and like.device.type == "cpu" and torch.get_num_threads() > 1 and shapes):
            return
        sizes = [math.prod(s) for s in shapes]
        flat = self._get("step", (sum(sizes),), like=like)
        if self._worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._generator = torch.Generator()
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="gencls-noise")
        self._generator.manual_seed(int(torch.randint(0, 2**62, ())))  # drawn from the default generator
        half = flat.numel() // 2
        job = self._worker.submit(flat[half:].normal_, generator=self._generator)
        flat[:half].normal_()
        job.result()
        self._planned = [t.view(s) for t, s in zip(flat.split(sizes), shapes)][::-1]  # popped from the end

    def add_normal(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            return x
        if self._planned:
            noise = self._planned.pop()
            if noise.shape != x.shape:
                raise RuntimeError(f"NoiseBank: noise prefilled for shape {tuple(noise.shape)}, asked for {tuple(x.shape)}")
        else:
            noise = self._get("normal", x.shape, like=x).normal_()
        return torch.add(x, noise, alpha=sigma)

    def uniform(self, shape, device=None) -> torch.Tensor:
        return self._get("uniform", shape, device=device).uniform_()

    def __deepcopy__(self, memo):  # buffers, generator and thread are a cache: a copy starts empty
        fresh = NoiseBank()
        fresh.parallel = self.parallel
        return fresh


class _WNLinearFunction(torch.autograd.Function):
    """``(x vᵀ) · g/‖v‖ + b`` (row norms of v) with a hand-written backward.

    Autograd's backward of the row norms takes four passes over the weights (divide, multiply,
    mask, accumulate); here the norms' share of v's gradient, a per-row multiple of v, is added
    to the product's gradient in one pass (``addcmul``). Same numbers to float rounding."""

    generate_vmap_rule = True  # the stacked seeds (torch.func.vmap) batch it like any op

    @staticmethod
    def forward(x, v, g, b):
        u = F.linear(x, v)
        n = torch.linalg.vector_norm(v, dim=1)
        return torch.addcmul(b, u, g / n), u, n

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, v, g, _ = inputs
        _, u, n = output
        ctx.mark_non_differentiable(u, n)
        ctx.save_for_backward(x, v, g, n, u)

    @staticmethod
    def backward(ctx, dy, _du, _dn):
        x, v, g, n, u = ctx.saved_tensors
        dx = dv = dg = db = None
        du = dy * (g / n)
        if ctx.needs_input_grad[0]:
            dx = du @ v
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ds = (dy * u).sum(0)  # gradient of the scales s = g/n
            if ctx.needs_input_grad[2]:
                dg = ds / n
            if ctx.needs_input_grad[1]:  # the product's du^T x, plus ds/dv = -g v / n^3 per row
                dv = torch.addcmul(torch.mm(du.t(), x), v, (-ds * g / n.pow(3)).unsqueeze(1))  # vmap: no in-place
        if ctx.needs_input_grad[3]:
            db = dy.sum(0)
        return dx, dv, dg, db


def wn_linear(x: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(x vᵀ) · g/‖v‖ + b``: when it is trained on the CPU in fp32 through ``_WNLinearFunction``
    (fewer passes over the weights backward); otherwise (no gradient, CUDA, autocast, export or
    compilation) as plain ops."""
    if (x.is_cuda or x.dim() != 2 or x.dtype != torch.float32 or not torch.is_grad_enabled() or not v.requires_grad
            or torch.is_autocast_enabled(x.device.type) or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return torch.addcmul(b, F.linear(x, v), g / v.norm(dim=1))
    return _WNLinearFunction.apply(x, v, g, b)[0]


class WNLinear(nn.Module):
    """Weight-normalised dense layer, W = v * g / ||v|| (row-wise), as in Salimans & Kingma 2016.

    ``data_init(x)`` sets g and b so that the pre-activations on ``x`` have zero mean and unit
    variance per unit (the data-dependent initialisation of the Improved-GAN code). The scale g
    is trainable only if ``train_scale`` (the Improved-GAN MNIST discriminator trains it only in
    the output layer); otherwise it is fixed after the data-dependent initialisation.
    """

    def __init__(self, in_features: int, out_features: int, train_scale: bool = False,
                 init_std: float = 0.1):
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * init_std)
        self.g = nn.Parameter(torch.ones(out_features), requires_grad=train_scale)
        self.b = nn.Parameter(torch.zeros(out_features))

    scale_outputs = False  # True: scale the outputs (x v^T) * g/||v|| instead of forming W (faster, same map)

    def scale(self) -> torch.Tensor:
        return self.g / self.v.norm(dim=1)

    def weight(self) -> torch.Tensor:
        return self.v * self.scale().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_outputs:
            return wn_linear(x, self.v, self.g, self.b)
        return F.linear(x, self.weight(), self.b)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> torch.Tensor:
        """Initialise g, b from a batch; returns the normalised pre-activations."""
        a = F.linear(x, self.weight())
        mean, std = a.mean(0), a.pow(2).mean(0).sub(a.mean(0).pow(2)).clamp_min(1e-12).sqrt()
        self.g.div_(std)
        self.b.copy_(-mean / std)
        return (a - mean) / std


def scale_outputs(module: nn.Module) -> nn.Module:
    """Every ``WNLinear`` in ``module`` scales its outputs instead of forming its weight: the same
    map, fewer passes over the weights (and ``wn_linear``'s one-pass backward on the CPU)."""
    for m in module.modules():
        if isinstance(m, WNLinear):
            m.scale_outputs = True
    return module


class BiasOnlyBatchNorm1d(nn.BatchNorm1d):
    """Batch norm with a learned shift but no learned scale (Lasagne ``batch_norm(g=None)``).

    The scale is a constant buffer of ones rather than ``affine=False``: cuDNN's batch-norm
    backward fails under ``torch.autograd.grad`` when the layer has no weight and bias.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=True)
        del self.weight
        self.register_buffer("weight", torch.ones(num_features), persistent=False)
