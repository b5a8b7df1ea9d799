"""Every registered method honours the contract (timm-style: one test runs them all).

"Every" is the list at collection: the built-in methods and those of installed plugins (entry
points ``gencls.methods``), so a plugin's author can run these on their method. The fake plugins
of test_plugins.py are on the path only inside their own tests, which put the registry back."""
import pytest
import torch

from gencls.methods import CannotGenerate, create_method, list_methods
from gencls.training.checkpoint import load_checkpoint, save_checkpoint

SHAPE, K = (1, 28, 28), 10


def batches(method, b=8):
    g = torch.Generator().manual_seed(0)
    x_lab = torch.rand(b, *SHAPE, generator=g)
    y_lab = torch.arange(b) % K
    x_unl = torch.rand(b * max(1, method.unlabelled_batches), *SHAPE, generator=g) if method.unlabelled_batches else None
    return x_lab, y_lab, x_unl


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    torch.manual_seed(0)
    m = create_method(name, {}, SHAPE, K)
    m.train()
    m.setup(torch.rand(32, *SHAPE))
    losses = m.train_step(*batches(m))
    assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    logits = m.classify(torch.rand(5, *SHAPE))
    assert logits.shape == (5, K)
    x = torch.rand(5, *SHAPE)
    score = m.ood_score(x)
    assert score.shape == (5,) and torch.isfinite(score).all()
    both = m.classify_and_score(x)
    assert torch.allclose(both[0], m.classify(x)) and torch.allclose(both[1], score)
    if m.can_generate:
        assert m.generate(6).shape == (6, *SHAPE)
        assert m.latent_distribution
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        labels = torch.arange(3) if m.can_condition else None
        z = m.sample_latent(3, g2)
        assert torch.equal(m.generate(3, labels=labels, generator=g1), m.decode_latent(z, labels))
        if not m.can_condition:
            with pytest.raises(CannotGenerate):
                m.generate(2, labels=torch.tensor([1, 2]))
    else:
        with pytest.raises(CannotGenerate):
            m.generate(2)
        with pytest.raises(CannotGenerate):
            m.sample_latent(2)


@pytest.mark.parametrize("name", list_methods())
def test_state_round_trip_continues_identically(name, tmp_path):
    """A method restored from a checkpoint file takes exactly the same next step."""
    torch.manual_seed(0)
    a = create_method(name, {}, SHAPE, K).train()
    a.setup(torch.rand(32, *SHAPE))
    a.train_step(*batches(a))
    save_checkpoint(tmp_path / "m.safetensors", a.state(), {"note": "test"})
    state, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta == {"note": "test"}
    b = create_method(name, {}, SHAPE, K).train()
    b.load_state(state)
    torch.manual_seed(1)
    la = a.train_step(*batches(a))
    torch.manual_seed(1)
    lb = b.train_step(*batches(b))
    assert {k: v.item() for k, v in la.items()} == {k: v.item() for k, v in lb.items()}
    x = torch.rand(4, *SHAPE)
    assert torch.equal(a.classify(x), b.classify(x))


def test_unknown_setting_is_a_user_error():
    from gencls.errors import GenclsError
    with pytest.raises(GenclsError, match="unknown setting"):
        create_method("improved-gan", {"lrr": 1}, SHAPE, K)
    with pytest.raises(GenclsError, match="unknown method"):
        create_method("nope", {}, SHAPE, K)


@pytest.mark.parametrize("fused", [True, False])
def test_improved_gan_feature_matching_l1_is_the_generators_loss(fused):
    """--set feature_matching=l1 (the reference CIFAR-10 code's loss) reaches the generator step:
    the logged loss_gen is the mean absolute difference of the feature means."""
    from gencls.errors import GenclsError
    from gencls.losses import feature_matching_loss

    torch.manual_seed(0)
    m = create_method("improved-gan", {"feature_matching": "l1", "fused": fused, "hidden": [32, 16]}, SHAPE, K)
    x_lab, y_lab, x_unl = batches(m)
    m.setup(x_unl)
    seen = []
    original = m._generator_update

    def spy(f_real, f_fake):
        seen.append((feature_matching_loss(f_real.float(), f_fake.float(), "l1"),
                     feature_matching_loss(f_real.float(), f_fake.float(), "l2")))
        return original(f_real, f_fake)
    m._generator_update = spy
    losses = m.train_step(x_lab, y_lab, x_unl)
    l1, l2 = seen[0]
    assert torch.allclose(losses["loss_gen"], l1) and not torch.allclose(l1, l2)
    with pytest.raises(GenclsError, match="l1 or l2"):
        create_method("improved-gan", {"feature_matching": "l3"}, SHAPE, K)
