"""Progressive resizing (traintricks.data.resize): the image sizes seen per epoch follow the schedule, evaluation
stays at full size (with flip TTA), augmentations still apply, and a model that needs one size is refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from traintricks.callback import Callback
from traintricks.data import TensorLoader
from traintricks.data.augment import AUGMENTATIONS
from traintricks.data.resize import ProgressiveResizing
from traintricks.training import Trainer, build_trainer

from ..conftest import PRECISION


class Sizes(Callback):
    """The (H, W) of every trained batch per epoch, and of every evaluated batch."""

    def __init__(self):
        self.train, self.eval = {}, []

    def on_after_forward(self, trainer):
        self.train.setdefault(trainer.epoch, set()).add(tuple(trainer.batch[0].shape[-2:]))

    def on_eval_outputs(self, trainer, inputs, outputs):
        self.eval.append(tuple(inputs.shape[-2:]))


def _pooled(c=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def _data(n=32, h=28, w=28):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, h, w, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_the_sizes_seen_per_epoch_follow_the_schedule_and_evaluation_is_at_full_size():
    x, y = _data()
    sizes = Sizes()
    loader = TensorLoader(x, y, 8, shuffle=True, transform=AUGMENTATIONS.get("crop")(padding=2))
    t = Trainer(_pooled(), torch.optim.SGD(_pooled().parameters(), lr=0.1), F.cross_entropy, loader,
                test_loader=TensorLoader(x, y, 16), epochs=5, progress=False, precision=PRECISION, tta_flip=True,
                callbacks=[ProgressiveResizing([16, 24], [2, 1]), sizes])
    t.fit()
    assert sizes.train == {0: {(16, 16)}, 1: {(16, 16)}, 2: {(24, 24)}, 3: {(28, 28)}, 4: {(28, 28)}}
    assert set(sizes.eval) == {(28, 28)}
    assert [r["image_size"] for r in t.history] == [16, 16, 24, 28, 28]


def test_the_resize_keeps_the_aspect_ratio_and_is_a_smooth_downsampling():
    cb = ProgressiveResizing([10], [1])
    x = torch.ones(2, 3, 20, 30)
    out = cb.resize(x, 10)
    assert out.shape == (2, 3, 10, 15)
    torch.testing.assert_close(out, torch.ones_like(out))            # a constant image stays constant
    ramp = torch.arange(20.0).view(1, 1, 20, 1).expand(1, 1, 20, 20).contiguous()
    small = cb.resize(ramp, 10)
    # a linear ramp stays linear inside (pixel centres 2i + 0.5, the antialiasing filter symmetric); the two
    # border pixels see a clipped filter
    torch.testing.assert_close(small[0, 0, 1:-1, 0], torch.arange(1.0, 9.0) * 2 + 0.5)
    assert cb.resize(x, 40) is x                                     # at or above full size: as it is


def test_a_model_that_needs_one_size_is_refused_clearly():
    x, y = _data(16)
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    t = Trainer(flat, torch.optim.SGD(flat.parameters(), lr=0.1), F.cross_entropy, [(x, y)], epochs=2,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1])])
    with pytest.raises(ValueError, match="global pooling"):
        t.fit()


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="one length"):
        ProgressiveResizing([16, 24], [1])
    with pytest.raises(ValueError, match=">= 1"):
        ProgressiveResizing([0], [1])
    with pytest.raises(ValueError, match="mode"):
        ProgressiveResizing([16], [1], mode="lanczos")


def test_by_name_from_the_config(tiny_cfg):
    cfg = tiny_cfg("epochs=2", "data.limit=200", 'data.augment=["flip"]', "data.augment_from_epoch=0",
                   'callbacks=["tta_flip", {name = "progressive_resizing", sizes = [6], epochs = [1]}]')
    sizes = Sizes()
    t = build_trainer(cfg, progress=False, callbacks=[sizes])
    t.fit()
    assert sizes.train == {0: {(6, 6)}, 1: {(8, 8)}}                  # the digits are 8 x 8
    assert [r["image_size"] for r in t.history] == [6, 8]


def test_schedules_that_cannot_do_what_they_say_are_refused_or_warned(tiny_cfg, tmp_path):
    # found by a new user: decreasing sizes, a schedule with no full-size epoch, sizes above the data's: all silent
    from traintricks.config import ConfigError
    from traintricks.data.resize import ProgressiveResizing
    from traintricks.training import build_trainer
    with pytest.raises(ValueError, match="sizes must grow"):
        ProgressiveResizing(sizes=[6, 4], epochs=[1, 1])
    with pytest.raises(ConfigError, match="never train at full size"):
        build_trainer(tiny_cfg("epochs=2", 'callbacks=[{name="progressive_resizing", sizes=[4, 6], epochs=[1, 1]}]'),
                      out_dir=tmp_path / "a", progress=False)
    with pytest.warns(UserWarning, match="not below the images' 8 pixels"):     # when the run is built
        build_trainer(tiny_cfg("epochs=2", 'callbacks=[{name="progressive_resizing", sizes=[16], epochs=[1]}]'),
                      out_dir=tmp_path / "b", progress=False)


@pytest.mark.parametrize("run, want", [
    (24, [20] * 4 + [28] * 20),        # the length planned for: as given
    (12, [20] * 2 + [28] * 10),        # half the run: half the resized epochs (multicycle's rescaling)
    (6, [20] + [28] * 5),
    (2, [28] * 2),                     # round(2 * 4 / 24) = 0: no resized epoch
    (1, [28]),
    (3, [20] * 0 + [28] * 3),          # round(0.5) = 0
    (48, [20] * 8 + [28] * 40)])
def test_run_epochs_rescales_the_stages_to_the_run_and_keeps_the_last_epoch_full(run, want):
    x, y = _data(16)
    sizes = Sizes()
    model = _pooled()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=run,
                progress=False, precision=PRECISION,
                callbacks=[ProgressiveResizing([20], [4], run_epochs=24), sizes])
    t.fit()
    assert [max(sizes.train[e])[0] for e in range(run)] == want


def test_run_epochs_never_resizes_the_last_epoch():
    cb = ProgressiveResizing([12, 20], [3, 3], run_epochs=7)
    t = type("T", (), {"epochs": 4})()
    cb.setup(t)                            # spans [0, 12/7 = 1.71), [1.71, 24/7 = 3.43); epoch 3 the last
    # epoch 1 overlaps both stages: the larger size; epoch 2 inside the second; the last always full
    assert [cb.size_at(e) for e in range(4)] == [12, 20, 20, None]
    t.epochs = 2
    cb.setup(t)                            # spans [0, 0.86), [0.86, 1.71): epoch 0 overlaps both
    assert [cb.size_at(e) for e in range(2)] == [20, None]
    with pytest.raises(ValueError, match="run_epochs"):
        ProgressiveResizing([12], [1], run_epochs=-1)


def test_not_strict_a_model_that_needs_one_size_trains_at_full_size_with_one_warning():
    x, y = _data(16)
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    sizes = Sizes()
    t = Trainer(flat, torch.optim.SGD(flat.parameters(), lr=0.1), F.cross_entropy, [(x, y), (x, y)], epochs=3,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [2], strict=False), sizes])
    with pytest.warns(UserWarning, match="global pooling.*as they are") as rec:
        t.fit()
    assert sum("progressive_resizing" in str(w.message) for w in rec) == 1
    assert sizes.train == {0: {(28, 28)}, 1: {(28, 28)}, 2: {(28, 28)}}
    assert len(t.history) == 3 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in t.history)


def test_not_strict_inputs_that_are_not_images_are_trained_as_they_are():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    mlp = nn.Linear(5, 3)
    t = Trainer(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), F.cross_entropy, [(x, y)], epochs=2,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1], strict=False)])
    with pytest.warns(UserWarning, match=r"float image batches.*\(16, 5\)"):
        t.fit()
    strict = Trainer(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), F.cross_entropy, [(x, y)], epochs=2,
                     progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1])])
    with pytest.raises(ValueError, match="float image batches"):
        strict.fit()


def test_sizes_as_fractions_of_the_data_height():
    x, y = _data(8, 28, 28)
    sizes = Sizes()
    model = _pooled()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=3,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([0.5, 0.72], [1, 1]), sizes])
    t.fit()
    assert sizes.train == {0: {(14, 14)}, 1: {(20, 20)}, 2: {(28, 28)}}
    assert [r["image_size"] for r in t.history] == [14, 20, 28]
    assert ProgressiveResizing.pixels(0.72, 32) == 23 and ProgressiveResizing.pixels(0.72, 8) == 6
    assert ProgressiveResizing.pixels(0.01, 8) == 1 and ProgressiveResizing.pixels(20, 8) == 20
    for bad, match in (([0.5, 20], "all pixels"), ([1.5], r"in \(0, 1\]"), ([0.0], r"in \(0, 1\]"),
                       ([True], "must be numbers"),
                       (["20"], "must be numbers")):
        with pytest.raises(ValueError, match=match):
            ProgressiveResizing(bad, [1] * len(bad))


def test_a_schedule_may_start_again_small_after_a_full_size_stage():
    """1.0 (full size) ends a ramp; the next stage may be small again (resizing at a multicycle restart). A drop
    anywhere else is still refused (a new user's [6, 4] was silent once)."""
    x, y = _data(8, 28, 28)
    sizes = Sizes()
    model = _pooled()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=7,
                progress=False, precision=PRECISION,
                callbacks=[ProgressiveResizing([0.5, 1.0, 0.72, 0.86], [2, 1, 1, 2]), sizes])
    t.fit()
    assert [max(sizes.train[e])[0] for e in range(7)] == [14, 14, 28, 20, 24, 24, 28]
    assert [r["image_size"] for r in t.history] == [14, 14, 28, 20, 24, 24, 28]
    cb = ProgressiveResizing([0.72, 1.0, 0.72], [4, 3, 4], run_epochs=24)
    cb.setup(type("T", (), {"epochs": 12})())          # rescaled spans [0, 2), [2, 3.5), [3.5, 5.5)
    # epoch 3 overlaps the full-size stage (full), epoch 4 lies inside the restart's span, epoch 5 reaches past it
    assert [cb.size_at(e) for e in range(12)] == [0.72] * 2 + [1.0] * 2 + [0.72] + [None] * 7
    for bad in ([0.5, 0.9, 0.5], [0.72, 0.5], [20, 28, 20]):
        with pytest.raises(ValueError, match="sizes must grow.*after a full-size stage"):
            ProgressiveResizing(bad, [1] * len(bad))


def test_restarts_in_pixels_and_a_plain_1_for_full_size():
    """Found by a new user: [16, 32, 16] was refused with a hint (1.0) that was then refused in a pixel
    schedule; TOML's plain 1 in [0.5, 1, 0.5] was refused as mixing pixels and fractions."""
    assert ProgressiveResizing([16, 1.0, 16], [1, 1, 1]).sizes == [16, 1.0, 16]
    assert ProgressiveResizing([0.5, 1, 0.5], [1, 1, 1]).sizes == [0.5, 1.0, 0.5]
    assert ProgressiveResizing([16, 1, 16], [1, 1, 1]).sizes == [16, 1.0, 16]
    x, y = _data(8, 28, 28)
    sizes = Sizes()
    model = _pooled()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=4,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([14, 1.0, 20], [1, 1, 1]), sizes])
    t.fit()
    assert [max(sizes.train[e])[0] for e in range(4)] == [14, 28, 20, 28]


def test_a_schedule_ending_at_full_size_may_cover_the_run():
    """Found by a new user: sizes [0.5, 1.0], epochs [2, 6] on an 8-epoch run was refused as never training at
    full size."""
    cb = ProgressiveResizing([0.5, 1.0], [2, 6])
    cb.setup(type("T", (), {"epochs": 8})())
    assert [cb.size_at(e) for e in range(8)] == [0.5, 0.5] + [1.0] * 6
    with pytest.raises(ValueError, match="never train at full size"):
        ProgressiveResizing([0.5, 1.0, 0.5], [2, 4, 2]).setup(type("T", (), {"epochs": 8})())


@pytest.mark.parametrize("run, want", [
    # planned for 8 epochs: [0.5] x 2, [1.0] x 2, [0.5] x 2, then full (a multicycle of [4, 4] restarting at 4)
    (8, [16, 16, 32, 32, 16, 16, 32, 32]),
    # 7 epochs: spans [0, 1.75), [1.75, 3.5), [3.5, 5.25); the restart at 3.5 is mid-epoch 3: epoch 3 stays full
    # (small images never start before the restart), epoch 4 small, epoch 5 reaches past the schedule: full
    (7, [16, 32, 32, 32, 16, 32, 32]),
    # 5 epochs: spans [0, 1.25), [1.25, 2.5), [2.5, 3.75): no whole epoch inside the second small stage
    (5, [16, 32, 32, 32, 32])])
def test_rescaled_restarts_never_resize_the_previous_cycles_end(run, want):
    """Found by a new user: rounding each boundary to the nearest epoch put the first cycle's cool-down (which
    multicycle ends mid-epoch) on small images, or the restart's small images half an epoch early."""
    cb = ProgressiveResizing([0.5, 1.0, 0.5], [2, 2, 2], run_epochs=8)
    cb.setup(type("T", (), {"epochs": run})())
    assert [cb.pixels(s, 32) if s is not None else 32 for s in map(cb.size_at, range(run))] == want


def test_every_size_not_below_the_images_warns_and_a_refusal_is_one_message():
    x, y = _data(8, 28, 28)
    model = _pooled()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=4,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16, 40], [1, 2])])
    with pytest.warns(UserWarning, match="size 40 is not below the images' 28 pixels"):
        t.fit()
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    t = Trainer(flat, torch.optim.SGD(flat.parameters(), lr=0.1), F.cross_entropy, [(x, y)], epochs=2,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1])])
    with pytest.raises(ValueError, match="global pooling") as info:
        t.fit()
    assert info.value.__context__ is None and info.value.__cause__ is None     # not printed twice, chained


# ------------------------------------------------------------------- in the recipe (the default recipe uses it)
def test_the_recipe_checks_resizing_when_the_run_is_built(tiny_cfg, tmp_path):
    """Found by a new user: a refused model was a traceback at the first resized batch; now a ConfigError naming
    the entry before any work (strict), or one warning at build time and full-size training (not strict)."""
    from traintricks.config import ConfigError
    strict = '{name = "progressive_resizing", sizes = [0.5], epochs = [1]}'
    flat = ["data.name=diabetes", "model.name=mlp", "task=regression", "data.augment=[]"]
    with pytest.raises(ConfigError, match=r"callbacks\[1\].*float image batches"):
        build_trainer(tiny_cfg(*flat, f'callbacks=["tta_flip", {strict}]'), out_dir=tmp_path / "a", progress=False)
    loose = strict.replace("}", ", strict = false}")
    with pytest.warns(UserWarning, match="float image batches.*as they are"):
        t = build_trainer(tiny_cfg(*flat, f"callbacks=[{loose}]"), out_dir=tmp_path / "b", progress=False)
    cb = t.find_callback(ProgressiveResizing)
    assert cb.disabled and cb.size_at(0) is None
    t.fit()                                # no second warning, no error: the tables trained as they are
    assert len(t.history) == 2


def test_default_recipe_resizing_follows_the_run_length(tiny_cfg):
    """The default recipe's entry on a shortened run: rescaled like its cycles, last epoch full."""
    from traintricks.config import DEFAULTS
    entry = {**DEFAULTS["callbacks"][0]}
    sizes = Sizes()
    import json
    t = build_trainer(tiny_cfg("epochs=6", f"callbacks=[{_inline(entry)}]"), progress=False, callbacks=[sizes])
    t.fit()
    # digits are 8x8: round(0.72 * 8) = 6 pixels for round(6 * 4 / 24) = 1 epoch
    assert [r["image_size"] for r in t.history] == [6, 8, 8, 8, 8, 8]
    assert json.dumps(entry)            # the entry is plain config values


def _inline(entry):
    """A dict as a TOML inline table."""
    def val(v):
        return "true" if v is True else "false" if v is False else f'"{v}"' if isinstance(v, str) else \
            "[" + ", ".join(map(val, v)) + "]" if isinstance(v, list) else str(v)
    return "{" + ", ".join(f"{k} = {val(v)}" for k, v in entry.items()) + "}"


def test_report_html_shows_the_image_size_of_each_epoch(tiny_cfg, tmp_path):
    """Found by a new user: report.md showed each epoch's image size, report.html did not."""
    from traintricks.evaluation.report import render_run_report
    from traintricks.training import run
    run(tiny_cfg("epochs=3", 'callbacks=[{name = "progressive_resizing", sizes = [6], epochs = [2]}]'), tmp_path)
    html = render_run_report(tmp_path).read_text()
    assert "Training image height (progressive resizing): 6 px: epochs 1-2; 8 px: epoch 3" in html


def test_the_console_epoch_line_shows_the_image_size(capsys):
    """Found by a new user: the epoch's image size was in the records and reports, not on the console."""
    x, y = _data(8, 28, 28)
    model = _pooled()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, [(x, y)], epochs=2,
            progress=True, precision=PRECISION, callbacks=[ProgressiveResizing([14], [1])]).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[-2] for line in lines] == ["14 px", "28 px"], lines


def test_a_plain_trainer_over_tensors_refuses_a_model_it_cannot_resize_when_built():
    """Last stop's open item: in Python a strict refusal came at the first resized batch of fit(). A loader holding
    its images as a tensor (TensorLoader, a DataLoader over a TensorDataset) is tried when the Trainer is built;
    a list of batches, a custom collate or a transform that might reshape still waits for the first batch."""
    from traintricks.data.augment import Compose, RandomCrop
    x, y = _data(16)
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))

    def build(loader, **kw):
        return Trainer(flat, torch.optim.SGD(flat.parameters(), lr=0.1), F.cross_entropy, loader, epochs=2,
                       progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1], **kw)])

    tensors = torch.utils.data.TensorDataset(x, y)
    for loader in (TensorLoader(x, y, 8), TensorLoader(x, y, 8, transform=Compose([RandomCrop(2)])),
                   torch.utils.data.DataLoader(tensors, batch_size=8)):
        with pytest.raises(ValueError, match="does not accept 16-pixel inputs.*global pooling"):
            build(loader)
        with pytest.warns(UserWarning, match="global pooling.*as they are"):
            t = build(loader, strict=False)
        assert t.callbacks and next(c for c in t.callbacks if isinstance(c, ProgressiveResizing)).disabled
    # left to the first batch: nothing to look at without iterating, or something that may reshape the batch
    later = [[(x, y)], TensorLoader(x, y, 8, transform=lambda xb, yb, generator=None: (xb, yb)),
             torch.utils.data.DataLoader(tensors, batch_size=8,
                                         collate_fn=lambda b: torch.utils.data.default_collate(b))]
    for loader in later:
        t = build(loader)
        with pytest.raises(ValueError, match="global pooling"):
            t.fit()
    # a model that can be resized is tried without changing it (eval, no_grad; training mode restored)
    model = _pooled()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, TensorLoader(x, y, 8),
                epochs=2, progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1])])
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(c for c in t.callbacks if isinstance(c, ProgressiveResizing)).checked


def test_the_model_is_tried_once_when_the_recipe_builds_an_in_memory_run(tiny_cfg, monkeypatch):
    """Found in review: the Trainer's setup (a TensorLoader shows an example) and the recipe both tried the model,
    so an in-memory run probed it twice at build time; a passed check is not repeated."""
    calls = []
    original = ProgressiveResizing._check
    monkeypatch.setattr(ProgressiveResizing, "_check", lambda self, *a: (calls.append(1), original(self, *a))[1])
    t = build_trainer(tiny_cfg("epochs=4", 'callbacks=[{name = "progressive_resizing", sizes = [0.75], '
                                           'epochs = [1]}]'), progress=False)
    assert len(calls) == 1
    t.fit()
    assert len(calls) == 1 and t.history[0]["image_size"] == 6
