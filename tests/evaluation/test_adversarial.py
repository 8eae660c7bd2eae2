"""Adversarial examples and training (traintricks.evaluation.adversarial): the attack raises the loss, stays in its
ball of raw pixels and in the data range, is seeded; robust_accuracy <= accuracy; a tiny run from the config."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from traintricks.evaluation.adversarial import AdversarialTraining, attack_loss, fgsm, pgd
from traintricks.training import Trainer, build_trainer, run

from ..conftest import PRECISION

MEAN, STD, RANGE = [0.3, 0.5], [0.2, 0.4], (0.0, 1.0)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _images(n=12, seed=0):
    """Raw images in [0, 1] and their standardized form (per channel MEAN / STD)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, 2, 6, 6, generator=g)
    raw[:, :, 0, 0] = 0.0                        # some pixels at the range's ends: the clip must hold there
    raw[:, :, 1, 1] = 1.0
    x = (raw - torch.tensor(MEAN).view(1, 2, 1, 1)) / torch.tensor(STD).view(1, 2, 1, 1)
    return raw, x, torch.randint(0, 3, (n,), generator=g)


def _raw(x):
    return x * torch.tensor(STD).view(1, 2, 1, 1) + torch.tensor(MEAN).view(1, 2, 1, 1)


def test_pgd_raises_the_loss_and_stays_in_the_raw_ball_and_the_data_range():
    model = _net().eval()
    raw, x, y = _images()
    cb = AdversarialTraining(eps=0.05, step_size=0.01, steps=10, mean=MEAN, std=STD, data_range=RANGE)
    adv = cb.perturb(model, x, y, 10, "pgd", torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    with torch.no_grad():                        # above the clean loss and above a random corner of the ball
        noise = cb.bounds(x)["eps"] * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(3)).mul(2).sub(1)
        assert attack_loss(model(adv), y) > attack_loss(model(x), y) + 0.3
        assert attack_loss(model(adv), y) > attack_loss(model(x + noise), y) + 0.3
    raw_adv = _raw(adv)
    assert (raw_adv - raw).abs().max() <= 0.05 + 1e-6            # the ball, in raw pixels
    assert (raw_adv - raw).abs().max() > 0.04                    # and it is used
    assert raw_adv.min() >= -1e-6 and raw_adv.max() <= 1 + 1e-6  # the data range
    fg = cb.perturb(model, x, y, 1, "fgsm", None)
    assert attack_loss(model(fg), y) > attack_loss(model(x), y)
    assert (_raw(fg) - raw).abs().max() <= 0.05 + 1e-6


def test_fgsm_is_the_clipped_sign_step():
    model = _net().eval()
    _, x, y = _images()
    x = x.requires_grad_(True)
    (g,) = torch.autograd.grad(attack_loss(model(x), y), x)
    expected = (x.detach() + 0.1 * g.sign()).clamp(-1.0, 1.0)
    torch.testing.assert_close(fgsm(model, x.detach(), y, 0.1, -1.0, 1.0), expected)


def test_pgd_is_seeded_and_leaves_parameters_and_statistics_alone():
    model = _net()
    _, x, y = _images()
    cb = AdversarialTraining(eps=0.05, step_size=0.01, steps=3, mean=MEAN, std=STD)
    bn = model[1]
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    a = cb._run_attack(model, model, x, y, 3, "pgd", torch.Generator().manual_seed(1))
    b = cb._run_attack(model, model, x, y, 3, "pgd", torch.Generator().manual_seed(1))
    c = cb._run_attack(model, model, x, y, 3, "pgd", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training                                        # the mode is put back
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    assert all(p.grad is None for p in model.parameters())
    madry = AdversarialTraining(model_mode="train", steps=3, mean=MEAN, std=STD)
    madry._run_attack(model, model, x, y, 3, "pgd", None)        # batch statistics, buffers restored
    assert torch.equal(bn.num_batches_tracked, before[1])


def test_training_batches_are_replaced_and_robust_accuracy_is_at_most_accuracy():
    raw, x, y = _images(48)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    model = _net()
    seen = []

    class Spy(AdversarialTraining):
        def on_before_forward(self, trainer):
            clean = trainer.batch[0].clone()
            super().on_before_forward(trainer)
            seen.append((clean, trainer.batch[0].clone()))
    cb = Spy(eps=0.03, step_size=0.01, steps=2, ratio=0.5, eval_examples=0, eval_steps=5, mean=MEAN, std=STD)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, loader, test_loader=loader,
                epochs=2, progress=False, precision=PRECISION, callbacks=[cb])
    summary = t.fit()
    clean, adv = seen[0]
    assert torch.equal(adv[8:], clean[8:]) and not torch.equal(adv[:8], clean[:8])       # ratio 0.5: the first half
    assert (_raw(adv) - _raw(clean)).abs().max() <= 0.03 + 1e-6
    assert 0 <= summary["test_robust_accuracy"] <= summary["test_accuracy"]
    assert "test_robust_accuracy" in t.history[-1]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="attack"):
        AdversarialTraining(attack="cw")
    with pytest.raises(ValueError, match="eps"):
        AdversarialTraining(eps=8.0)
    with pytest.raises(ValueError, match="ratio"):
        AdversarialTraining(ratio=0.0)
    with pytest.raises(ValueError, match="model_mode"):
        AdversarialTraining(model_mode="half")
    with pytest.raises(ValueError, match="data_range"):
        AdversarialTraining(data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="steps"):
        pgd(nn.Identity(), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 0.1, 0.1, steps=0)


def test_a_one_epoch_tiny_run_with_adversarial_training_writes_robust_accuracy(tiny_cfg, tmp_path):
    cfg = tiny_cfg("epochs=1", "data.limit=400",
                   'callbacks=[{name = "adversarial", eps = 0.05, step_size = 0.02, steps = 2, eval_examples = 100, '
                   'eval_steps = 3}]')
    t = build_trainer(cfg, progress=False)
    cb = t.find_callback(AdversarialTraining)
    assert cb.lo == pytest.approx(0.0, abs=1e-4) and cb.hi == pytest.approx(1.0, abs=1e-4)      # the digits source: raw 0..1
    summary = run(cfg, tmp_path / "run", progress=False)
    assert 0 <= summary["test_robust_accuracy"] <= 1
    assert "robust accuracy" in (tmp_path / "run" / "report.md").read_text()


def test_inputs_outside_the_given_range_are_refused_on_the_first_batch():
    # a new user's plain Trainer fed standardized inputs to AdversarialTraining() with its (0, 1) defaults: the
    # ball and the clip were in the wrong units, without a word
    from types import SimpleNamespace
    cb = AdversarialTraining()
    trainer = SimpleNamespace(batch=(torch.randn(8, 1, 4, 4) * 2, torch.zeros(8, dtype=torch.long), {}))
    with pytest.raises(ValueError, match="outside data_range"):
        cb.on_before_forward(trainer)
