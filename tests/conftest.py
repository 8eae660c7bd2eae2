import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the machine probe (traintricks/training/probe.py) off: no test depends on the machine's timings; the probe's own
# tests turn it on
os.environ.setdefault("TRAINTRICKS_PROBE", "off")
torch.set_num_threads(min(2, torch.get_num_threads()))

from traintricks.config import load_config  # noqa: E402

# The precision of every test that trains: never the machine's "auto" (bf16 where the CPU has AVX-512 BF16,
# else fp32), so that no test passes or fails by the machine. fp32 unless TRAINTRICKS_TEST_PRECISION says
# otherwise: run the suite with TRAINTRICKS_TEST_PRECISION=bf16 (and =fp32) to check that the thresholds of
# the training tests keep their margin under both (bf16 on a CPU without it is emulated: slow).
PRECISION = os.environ.get("TRAINTRICKS_TEST_PRECISION", "fp32")
if PRECISION not in ("fp32", "bf16"):
    raise pytest.UsageError(f"TRAINTRICKS_TEST_PRECISION must be fp32 or bf16, got {PRECISION!r}")

# A config small enough for a test: digits, a tiny CNN, PRECISION, a couple of epochs.
TINY = [
    "data.name=digits", "epochs=2", "batch_size=64", "lr=0.1", f"precision={PRECISION}", "channels_last=false",
    "model.widths=[8, 16]", "model.blocks=[1, 1]", "callbacks=[]", "data.augment=[]",
    "schedule.name=onecycle", "data.val_size=0.1",
]


@pytest.fixture
def tiny_cfg():
    def make(*overrides: str) -> dict:
        return load_config(None, [*TINY, *overrides])
    return make


@pytest.fixture(autouse=True)
def _no_machine_dependent_precision(monkeypatch):
    """A Trainer built in a test with ``precision="auto"`` fails the test: pass ``f"precision={PRECISION}"``."""
    import traintricks.training.trainer as trainer_module
    resolve = trainer_module.resolve_precision

    def strict(precision: str, device: torch.device) -> str:
        if precision == "auto":
            raise AssertionError('this test trains with precision="auto" (bf16 or fp32 by the machine); force '
                                 "tests.conftest.PRECISION (TRAINTRICKS_TEST_PRECISION) in its config")
        return resolve(precision, device)
    monkeypatch.setattr(trainer_module, "resolve_precision", strict)
