"""Multi-crop (shift) test-time augmentation: the views, the mean with and without flip TTA, the final-only rule."""
import pytest
import torch
from torch.nn import functional as F

from traintricks.training import build_trainer
from traintricks.training.callbacks import CALLBACKS, FlipTTA, ShiftTTA


def _shifted(x, dy, dx):
    """x translated by (dy, dx) pixels with zero fill, written with roll + masks (independent of views())."""
    out = torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1))
    h, w = x.shape[-2:]
    if dy > 0:
        out[..., h - dy:, :] = 0
    if dy < 0:
        out[..., :-dy, :] = 0
    if dx > 0:
        out[..., :, w - dx:] = 0
    if dx < 0:
        out[..., :, :-dx] = 0
    return out


@pytest.mark.parametrize("shift", [1, 2])
def test_views_are_the_four_zero_filled_translations(shift):
    x = torch.randn(3, 2, 7, 9)
    got = ShiftTTA(shift=shift).views(x)
    want = [_shifted(x, dy, dx) for dy, dx in ((-shift, 0), (shift, 0), (0, -shift), (0, shift))]
    assert len(got) == 4
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_views_match_the_training_crop_at_the_same_offset():
    """A crop of the zero-padded image at offset (p + dy, p + dx) is the same map as the view (dy, dx)."""
    x, p = torch.randn(2, 1, 6, 6), 2
    padded = F.pad(x, (p, p, p, p))
    views = ShiftTTA(shift=1).views(x)
    for v, (dy, dx) in zip(views, ((-1, 0), (1, 0), (0, -1), (0, 1))):
        assert torch.equal(v, padded[..., p + dy:p + dy + 6, p + dx:p + dx + 6])


def _trainer(tiny_cfg, callbacks, epochs=2):
    return build_trainer(tiny_cfg(f"epochs={epochs}", "data.augment=[\"flip\", \"crop\"]", "data.augment_from_epoch=0",
                                  f"callbacks={callbacks}"), progress=False)


def _expected_accuracy(model, x, y, views):
    model.eval()
    with torch.no_grad():
        logits = torch.stack([model(v) for v in views]).mean(0)
    return (logits.argmax(1) == y).float().mean().item(), logits


def test_with_flip_tta_the_final_evaluation_is_the_mean_of_ten_views(tiny_cfg):
    t = _trainer(tiny_cfg, '["tta_flip", "tta_shift"]')
    t.fit()
    x, y = t.test_loader.x[:64], t.test_loader.y[:64]
    shifts = [_shifted(x, dy, dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    views = [x, x.flip(-1)] + [w for s in shifts for w in (s, s.flip(-1))]
    acc, logits = _expected_accuracy(t.model, x, y, views)
    assert t.evaluate([(x, y)])["accuracy"] == pytest.approx(acc)
    t.model.eval()
    torch.testing.assert_close(t.eval_logits(x), logits, rtol=1e-5, atol=1e-5)


def test_without_flip_tta_the_mean_is_over_five_views(tiny_cfg):
    t = _trainer(tiny_cfg, '["tta_shift"]')
    t.fit()
    x = t.test_loader.x[:32]
    views = [x] + [_shifted(x, dy, dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    _, logits = _expected_accuracy(t.model, x, t.test_loader.y[:32], views)
    t.model.eval()
    torch.testing.assert_close(t.eval_logits(x), logits, rtol=1e-5, atol=1e-5)


def test_before_the_last_epoch_only_flip_tta_applies_unless_every_epoch(tiny_cfg):
    t = _trainer(tiny_cfg, '["tta_flip", "tta_shift"]', epochs=3)
    calls = []
    forward = t.eval_forward
    t.eval_forward = lambda v: calls.append(v.shape[0]) or forward(v)
    x = t.test_loader.x[:16]
    t.model.eval()
    t.epoch = 0                               # epoch 1 of 3: image and mirror
    t.eval_logits(x)
    assert len(calls) == 2
    calls.clear()
    t.epoch = 2                               # the last epoch: ten views
    t.eval_logits(x)
    assert len(calls) == 10
    calls.clear()
    t.find_callback(ShiftTTA).every_epoch = True
    t.epoch = 0
    t.eval_logits(x)
    assert len(calls) == 10


def test_history_records_the_views_in_the_last_epoch_only(tiny_cfg):
    """The last epoch's test accuracy (and the summary's) is the ten-view one; earlier epochs' are flip TTA's."""
    t = _trainer(tiny_cfg, '["tta_flip", "tta_shift"]')
    seen = []
    shift = t.find_callback(ShiftTTA)
    original = shift.on_eval_outputs
    shift.on_eval_outputs = lambda tr, i, o: seen.append((tr.epoch, original(tr, i, o) is not None)) or original(tr, i, o)
    t._index_callbacks()
    summary = t.fit()
    assert {e for e, used in seen if used} == {1} and {e for e, used in seen if not used} == {0}
    assert summary["test_accuracy"] == t.history[-1]["test_accuracy"]


def test_nothing_is_added_before_from_epoch(tiny_cfg):
    t = _trainer(tiny_cfg, '["tta_shift"]')
    shift = t.find_callback(ShiftTTA)
    shift.from_epoch, shift.every_epoch = 1, True
    x = t.test_loader.x[:8]
    t.model.eval()
    t.epoch = 0
    with torch.no_grad():
        torch.testing.assert_close(t.eval_logits(x), t.model(x))


def test_non_image_inputs_are_evaluated_unchanged():
    class T:
        epoch, epochs = 0, 1
    assert ShiftTTA(every_epoch=True).on_eval_outputs(T(), torch.randn(4, 10), torch.randn(4, 3)) is None


def test_bad_options_and_order_are_refused(tiny_cfg):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="shift must be an integer >= 1"):
            ShiftTTA(shift=bad)
    with pytest.raises(ValueError, match="put tta_flip before tta_shift"):
        _trainer(tiny_cfg, '["tta_shift", "tta_flip"]')


def test_registered_with_the_recipe_supplying_from_epoch(tiny_cfg):
    assert "tta_shift" in CALLBACKS.names()
    t = build_trainer(tiny_cfg("epochs=2", 'data.augment=["flip", "crop"]', "data.augment_from_epoch=1",
                               'callbacks=["tta_flip", {name = "tta_shift", shift = 2}]'), progress=False)
    s, f = t.find_callback(ShiftTTA), t.find_callback(FlipTTA)
    assert s.shift == 2 and s.from_epoch == 1 and f.from_epoch == 1


def test_warns_when_training_never_saw_translations_that_far(tiny_cfg):
    with pytest.warns(UserWarning, match="'tta_shift' \\(shift 1\\) is on but data.augment has no 'crop'"):
        build_trainer(tiny_cfg('data.augment=["flip"]', "data.augment_from_epoch=0", 'callbacks=["tta_flip", "tta_shift"]'),
                      progress=False)
    with pytest.warns(UserWarning, match="shift 3"):
        build_trainer(tiny_cfg('data.augment=["flip", {name = "crop", padding = 2}]', "data.augment_from_epoch=0",
                               'callbacks=["tta_flip", {name = "tta_shift", shift = 3}]'), progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_trainer(tiny_cfg('data.augment=["flip", {name = "translate", max_shift = 1}]', "data.augment_from_epoch=0",
                               'callbacks=["tta_flip", "tta_shift"]'), progress=False)
