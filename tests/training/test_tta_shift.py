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


def test_during_training_only_flip_tta_applies_unless_every_epoch(tiny_cfg):
    t = _trainer(tiny_cfg, '["tta_flip", "tta_shift"]', epochs=3)
    calls = []
    forward = t.eval_forward
    t.eval_forward = lambda v: calls.append(v.shape[0]) or forward(v)
    x = t.test_loader.x[:16]
    t.model.eval()
    for epoch in (0, 2):                      # the first and the last epoch's evaluations: image and mirror
        t.epoch = epoch
        t.eval_logits(x)
        assert len(calls) == 2
        calls.clear()
    shift = t.find_callback(ShiftTTA)
    t.after_training = True                   # the evaluations after training: ten views
    t.eval_logits(x)
    assert len(calls) == 10
    calls.clear()
    t.after_training, shift.every_epoch = False, True
    t.epoch = 0
    t.eval_logits(x)
    assert len(calls) == 10


def _count_views(t):
    """Record (epoch, after training?, views used?) for each evaluated batch."""
    seen = []
    shift = t.find_callback(ShiftTTA)
    original = shift.on_eval_outputs

    def counting(tr, i, o):
        out = original(tr, i, o)
        seen.append((tr.epoch, tr.after_training, out is not None))
        return out
    shift.on_eval_outputs = counting
    t._index_callbacks()
    return seen


def _ten_views(x):
    shifts = [_shifted(x, dy, dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    return [x, x.flip(-1)] + [w for s in shifts for w in (s, s.flip(-1))]


def test_the_history_is_flip_only_and_the_final_metrics_use_the_views(tiny_cfg):
    """Every epoch's val/test metrics (history, best epoch, early stopping) are computed without the shifted views;
    the summary's test metrics are recomputed after training with them."""
    t = _trainer(tiny_cfg, '["tta_flip", "tta_shift"]')
    seen = _count_views(t)
    summary = t.fit()
    assert all(not used for _, after, used in seen if not after)
    assert any(used for _, after, used in seen if after)
    x, y = t.test_loader.x, t.test_loader.y
    acc, _ = _expected_accuracy(t.model, x, y, _ten_views(x))
    assert summary["test_accuracy"] == pytest.approx(acc)
    flip_only, _ = _expected_accuracy(t.model, x, y, [x, x.flip(-1)])
    assert t.history[-1]["test_accuracy"] == pytest.approx(flip_only)


def test_a_run_ended_by_early_stopping_reports_the_views_too(tiny_cfg):
    """Found by a new user: with early stopping the last epoch was not the configured last one, so the views were
    never used. The final metrics are recomputed after training whatever ended it."""
    t = build_trainer(tiny_cfg("epochs=8", 'data.augment=["flip", "crop"]', "data.augment_from_epoch=0",
                               'callbacks=["tta_flip", "tta_shift"]', "early_stopping.name=patience",
                               "early_stopping.patience=1", "early_stopping.min_delta=0.5"), progress=False)
    seen = _count_views(t)
    summary = t.fit()
    assert summary["epochs"] < 8                      # stopped early
    assert any(used for _, after, used in seen if after)
    x, y = t.test_loader.x, t.test_loader.y
    acc, _ = _expected_accuracy(t.eval_model, x, y, _ten_views(x))
    assert summary["test_accuracy"] == pytest.approx(acc)


def test_a_shift_as_large_as_the_image_is_refused():
    with pytest.raises(ValueError, match=r"shift 8 is not smaller than the images \(8x8\)"):
        ShiftTTA(shift=8).views(torch.zeros(1, 1, 8, 8))


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


def test_tabular_inputs_warn_that_tta_does_not_apply(tiny_cfg, tmp_path):
    """Found by a new user: on a table the run warned about mirror images and translations; it now says that
    test-time augmentation is for images and these inputs are evaluated without it."""
    rows = ["a,b,c,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2},{i % 3}" for i in range(90)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    import warnings
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        build_trainer(tiny_cfg("data.name=csv", f'data.root="{tmp_path / "t.csv"}"', "data.target=label",
                               "model.name=mlp", "data.augment=[]", 'callbacks=["tta_flip", "tta_shift"]'),
                      progress=False)
    text = " ".join(str(w.message) for w in rec)
    assert "applies to images (C, H, W) only" in text and "'tta_flip', 'tta_shift'" in text
    assert "mirror" not in text and "translations" not in text


def test_image_augmentations_on_a_table_are_refused_before_training(tiny_cfg, tmp_path):
    """Found by a new user: a csv run with the default crop augmentation crashed epochs into the run ('crop needs
    images'); the recipe now tries each augmentation on the data's shape when it builds the run."""
    from traintricks.config import ConfigError
    rows = ["a,b,c,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2},{i % 3}" for i in range(90)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = [f'data.root="{tmp_path / "t.csv"}"', "data.name=csv", "data.target=label", "model.name=mlp",
           "callbacks=[]", "data.augment_from_epoch=0"]
    with pytest.raises(ConfigError, match=r"data.augment\[0\].*'crop' cannot transform this data's inputs of shape"):
        build_trainer(tiny_cfg(*cfg, 'data.augment=["crop", "flip"]'), progress=False)
    build_trainer(tiny_cfg(*cfg, 'data.augment=["mixup"]'), progress=False)          # applies to any input


@pytest.mark.parametrize("callbacks, views", [('["tta_flip", "tta_shift"]', 10), ('["tta_shift"]', 5),
                                              ('["tta_flip"]', 2), ('[]', None)])
def test_the_summary_says_how_many_views_the_final_metrics_average(tiny_cfg, callbacks, views):
    t = _trainer(tiny_cfg, callbacks, epochs=1)
    summary = t.fit()
    assert summary.get("tta_views") == views
    assert t.after_training


def test_no_views_counted_before_from_epoch(tiny_cfg):
    t = build_trainer(tiny_cfg("epochs=1", "data.augment=[\"flip\"]", "data.augment_from_epoch=5",
                               "callbacks=[\"tta_flip\", \"tta_shift\"]"), progress=False)
    assert "tta_views" not in t.fit()


def test_no_views_counted_on_inputs_that_are_not_images(tiny_cfg):
    """Found by a new user: a csv run said tta_views = 10 while its inputs were evaluated without any TTA."""
    with pytest.warns(UserWarning, match="applies to images"):
        t = build_trainer(tiny_cfg("data.name=diabetes", "model.name=mlp", "task=regression", "epochs=1",
                                   'callbacks=["tta_flip", "tta_shift"]'), progress=False)
    assert "tta_views" not in t.fit()
