"""The library's warnings name the user's line (traintricks.errors.warn), whatever depth of the library raised
them: a new user found warnings pointing into traintricks' own files (resize.py, schedules.py), where neither
``-W``/``filterwarnings`` by module nor the printed location helps."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .conftest import PRECISION
from traintricks.config import ConfigDeprecationWarning, load_config
from traintricks.data.resize import ProgressiveResizing
from traintricks.errors import warn
from traintricks.training import Trainer, build_trainer


def _only(rec, category=UserWarning, match=""):
    ws = [w for w in rec if issubclass(w.category, category) and match in str(w.message)]
    assert ws, [str(w.message) for w in rec]
    return ws


def test_warn_skips_every_frame_of_the_package():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        warn("from here")                                     # called from outside the package: this line
    assert rec[0].filename == __file__ and rec[0].category is UserWarning


def test_a_warning_deep_in_the_training_loop_names_the_users_fit_call():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))          # cannot take smaller images
    t = Trainer(flat, torch.optim.SGD(flat.parameters(), lr=0.1), F.cross_entropy, [(x, y)], epochs=2,
                progress=False, precision=PRECISION, callbacks=[ProgressiveResizing([16], [1], strict=False)])
    with pytest.warns(UserWarning) as rec:
        t.fit()
    for w in _only(rec, match="progressive_resizing"):
        assert w.filename == __file__, w.filename


def test_recipe_and_config_warnings_name_the_users_call(tiny_cfg, tmp_path):
    with pytest.warns(UserWarning) as rec:                 # a schedule too short to warm up (optim/schedules.py)
        build_trainer(tiny_cfg("data.limit=64", "schedule.min_warmup_steps=15"), out_dir=tmp_path, progress=False)
    for w in _only(rec, match="min_warmup_steps"):
        assert w.filename == __file__, w.filename
    with pytest.warns(ConfigDeprecationWarning) as rec:
        load_config(None, ["eval.tta_flip=false"])
    assert all(w.filename == __file__ for w in _only(rec, ConfigDeprecationWarning))


def test_under_the_cli_a_warning_at_the_entry_point_prints_without_its_meaningless_location(monkeypatch):
    """Found by a new user: every CLI warning printed as '.venv/bin/traintricks:8: UserWarning: ...' followed by
    'sys.exit(main())'."""
    from traintricks.cli import _cli_warning_format
    monkeypatch.setattr("sys.argv", ["/venv/bin/traintricks", "train"])
    fmt = _cli_warning_format(warnings.formatwarning)
    assert fmt("lr too high", UserWarning, "/venv/bin/traintricks", 8) == "traintricks: UserWarning: lr too high\n"
    assert fmt("x", UserWarning, "/usr/lib/python3.11/runpy.py", 88) == "traintricks: UserWarning: x\n"
    other = fmt("deprecated", FutureWarning, "/site-packages/torch/nn/modules/module.py", 1)
    assert other.startswith("/site-packages/torch/nn/modules/module.py:1: FutureWarning: deprecated")
