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
    t = build_trainer(tiny_cfg("epochs=2", 'callbacks=[{name="progressive_resizing", sizes=[16], epochs=[1]}]'),
                      out_dir=tmp_path / "b", progress=False)
    with pytest.warns(UserWarning, match="not below the images' 8 pixels"):
        t.fit()
