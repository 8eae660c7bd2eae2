"""``model.fold_for_eval`` / the ``fold_for_eval`` callback: evaluation through a copy with the batch norms folded,
equal to the unfolded evaluation, refolded whenever the weights change (issue 17)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from traintricks.evaluation.ema import ModelEMA
from traintricks.training import Trainer
from traintricks.training.callbacks import FoldForEval


class UserNet(nn.Module):
    """A user's conv net: functional relu, a BN after each conv, a linear head."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _loaders(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)], [(x[:24], y[:24])]


def _run(fold: bool, ema: bool = False):
    torch.manual_seed(0)
    model = UserNet()
    train, val = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t = Trainer(model, opt, nn.CrossEntropyLoss(), train, val, val, epochs=2, progress=False,
                ema=ModelEMA(model, decay=0.5) if ema else None, callbacks=[FoldForEval()] if fold else [])
    return t, t.fit()


@pytest.mark.parametrize("ema", [False, True])
def test_metrics_equal_the_unfolded_evaluation(ema):
    t_plain, s_plain = _run(False, ema)
    t_fold, s_fold = _run(True, ema)
    for rec_p, rec_f in zip(t_plain.history, t_fold.history):
        assert rec_f["val_loss"] == pytest.approx(rec_p["val_loss"], rel=1e-5, abs=1e-6)
        assert rec_f["val_accuracy"] == rec_p["val_accuracy"]
    assert s_fold["test_loss"] == pytest.approx(s_plain["test_loss"], rel=1e-5, abs=1e-6)
    # the trained model keeps its norms (saved and resumed as it is)
    assert any(isinstance(m, nn.BatchNorm2d) for m in t_fold.model.modules())


def test_evaluation_uses_the_folded_copy_and_refolds_after_a_weight_change():
    t, _ = _run(True)
    fwd = t.eval_forward
    x = _loaders()[1][0][0]
    t.model.eval()
    ref = t.model(x)
    out = fwd(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fwd.folded.modules())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():                          # a weight written in place (an optimizer step, a restore)
        t.model.c1.weight.mul_(2.0)
    torch.testing.assert_close(fwd(x), t.model(x), rtol=1e-5, atol=1e-5)


def test_a_model_without_batch_norm_is_refused_with_the_reason():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    train, val = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fold_for_eval: nothing to fold"):
        Trainer(model, opt, nn.CrossEntropyLoss(), train, val, epochs=1, progress=False, callbacks=[FoldForEval()])
