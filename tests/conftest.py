import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(min(2, torch.get_num_threads()))

from traintricks.config import load_config  # noqa: E402

# A config small enough for a test: digits, a tiny CNN, fp32, a couple of epochs.
TINY = [
    "data.name=digits", "epochs=2", "batch_size=64", "lr=0.1", "precision=fp32", "channels_last=false",
    "model.widths=[8, 16]", "model.blocks=[1, 1]", "eval.tta_flip=false", "data.augment=[]",
    "schedule.name=onecycle", "data.val_size=0.1",
]


@pytest.fixture
def tiny_cfg():
    def make(*overrides: str) -> dict:
        return load_config(None, [*TINY, *overrides])
    return make
