"""The machine probe: the config's ``"auto"`` precision, memory format, ``torch.compile`` and threads, chosen by
timing the run's own model for a few milliseconds.

The same recipe is fastest in different settings on different machines: bf16 autocast is 2-3x faster than fp32
on a CPU with AVX-512 BF16 / AMX and slower than fp32 on one without; channels-last helps oneDNN's convolutions
on most CPUs but not every shape; on a shared machine one thread can beat two when the other core is busy.
:func:`probe` times one training step (forward, loss, backward) of a copy of the model on a small random batch
for every candidate of each ``"auto"`` key, interleaved in rounds (the minimum per candidate, so a burst of load
from other processes hits all candidates alike), and picks the fastest:

- ``precision``: fp32, and bf16 where the hardware has it (:func:`bf16_capable`); bf16 only if it is at least
  ``MARGIN`` faster (fp32 is more accurate, so a tie goes to fp32). On CUDA: bf16 where supported, else fp16
  (no timing: the tensor cores always pay).
- ``channels_last`` (4-D image inputs only): channels-last only if at least ``MARGIN`` faster.
- ``threads`` (timed after the precision and format, which are timed on one thread): 1 against ``torch.get_num_threads()``; more threads only if at least
  ``THREADS_MARGIN`` faster (on a 2-core machine shared with other jobs, one thread can be 1.3x faster in fp32
  and several times faster in bf16).
- ``compile``: ``torch.compile`` costs seconds to tens of seconds of compilation, which a sub-second probe cannot
  weigh against its gain; ``"auto"`` compiles only on CUDA where Triton is importable (where it pays for
  training runs of more than a few hundred steps), never on CPU.

The probe takes well under a second for the default recipe's model (``seconds`` in the result) and is cached per
process (model class, parameter count, input shape, device, thread count and the keys asked). It is skipped when
the environment variable ``TRAINTRICKS_PROBE`` is ``off`` (the test suite sets it, so that tests never depend on
the machine's timings): then ``precision = "auto"`` is left to the Trainer (the hardware rule of
``resolve_precision``), channels-last is on for
4-D inputs, compile off, threads as they are. The result goes into the run's ``summary.json`` (``probe``).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import time
from typing import Any, Sequence

import torch
from torch import nn

from .trainer import resolve_precision

MARGIN = 0.10           # a non-default candidate must be this much faster (fraction of the default's time)
THREADS_MARGIN = 0.15
ROUNDS = 2              # timed rounds after one warm-up round
BATCH = 16
SLOW_S = 0.25           # a warm-up step slower than this: too slow to time, the static rules apply
BUDGET_S = 0.6         # no further timed round once the probe has run this long (at least one is done)
_CACHE: dict[tuple, dict[str, Any]] = {}

__all__ = ["probe", "bf16_capable", "probe_enabled", "MARGIN"]


def probe_enabled() -> bool:
    return os.environ.get("TRAINTRICKS_PROBE", "on").lower() not in ("off", "0", "false", "no")


def bf16_capable(device: torch.device) -> bool:
    """Whether the hardware runs bf16 natively (CPU: AVX-512 BF16 / AMX via oneDNN; CUDA: compute >= 8.0)."""
    return resolve_precision("auto", device) == "bf16"


def _compile_available(device: torch.device) -> bool:
    return device.type == "cuda" and hasattr(torch, "compile") and importlib.util.find_spec("triton") is not None


def _step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        loss = nn.functional.cross_entropy(out.float().flatten(1), y) if out.dim() >= 2 and out.shape[1] > 1 \
            else out.float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def probe(model: nn.Module, input_shape: Sequence[int], num_classes: int, device: torch.device | str = "cpu", *,
          precision: str = "auto", channels_last: bool | str = "auto", compile: bool | str = "auto",
          threads: int | str = "auto", batch: int = BATCH) -> dict[str, Any]:
    """Resolve the ``"auto"`` settings for training ``model`` on inputs of ``input_shape`` (without the batch
    dimension) on ``device``. Settings given explicitly are returned unchanged and not timed.

    Returns ``{"precision", "channels_last", "compile", "threads", "source", "seconds", "timings_ms"}``:
    ``source`` is ``"probe"``, ``"cache"``, ``"off"`` (``TRAINTRICKS_PROBE=off``), ``"fixed"`` (nothing was
    ``"auto"``) or ``"static (why)"`` (a model too slow to time in the budget, or one that does not train on a random
    batch: the rules of ``"off"``); ``timings_ms`` the best step time of each candidate timed. ``threads`` is an int (the count
    chosen; ``torch.set_num_threads`` is left at it) or 0 (unchanged). The model is not modified (a deep copy is
    timed). Raises ``ValueError`` for a value that is neither ``"auto"`` nor a valid setting."""
    device = torch.device(device)
    for key, value, ok in (("precision", precision, ("auto", "fp32", "bf16", "fp16")),
                           ("channels_last", channels_last, ("auto", True, False)),
                           ("compile", compile, ("auto", True, False))):
        if value not in ok or (isinstance(value, (int, float)) and not isinstance(value, bool) and key != "threads"):
            raise ValueError(f"{key} must be one of {ok}, got {value!r}")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be 'auto' or an int >= 0, got {threads!r}")
    image = len(input_shape) == 3
    result: dict[str, Any] = {"precision": precision, "channels_last": channels_last and image, "compile": compile,
                              "threads": 0 if threads == "auto" else threads, "source": "fixed", "seconds": 0.0,
                              "timings_ms": {}}
    asked = tuple(k for k, v in (("precision", precision), ("channels_last", channels_last), ("compile", compile),
                                 ("threads", threads)) if v == "auto")
    if not asked:
        return result
    if compile == "auto":
        result["compile"] = _compile_available(device)
    if not probe_enabled():
        result.update(source="off")       # precision "auto" stays: the Trainer applies the hardware rule
        if channels_last == "auto":
            result["channels_last"] = image
        return result
    n_params = sum(p.numel() for p in model.parameters())
    key = (type(model).__qualname__, n_params, tuple(input_shape), str(device), torch.get_num_threads(), asked,
           precision, channels_last, threads)
    if key in _CACHE:
        cached = {**_CACHE[key], "source": "cache"}
        if cached["threads"]:
            torch.set_num_threads(cached["threads"])
        return cached

    t_start = time.perf_counter()
    if device.type == "cuda":       # the tensor cores always pay; channels-last helps cuDNN's convolutions
        if precision == "auto":
            result["precision"] = resolve_precision("auto", device)
        if channels_last == "auto":
            result["channels_last"] = image
        result.update(source="probe", seconds=round(time.perf_counter() - t_start, 3))
        _CACHE[key] = dict(result)
        return result

    n_threads = torch.get_num_threads()
    try:
        _time_candidates(model, input_shape, num_classes, device, precision, channels_last, threads, batch, image,
                         result, t_start)
    except _Unprobeable as e:        # the static rules, as with TRAINTRICKS_PROBE=off, and why
        torch.set_num_threads(n_threads)
        result.update(source=f"static ({e})", timings_ms={}, threads=0 if threads == "auto" else threads,
                      precision=precision, channels_last=image if channels_last == "auto" else channels_last)
    else:
        result["source"] = "probe"
    result["seconds"] = round(time.perf_counter() - t_start, 3)
    _CACHE[key] = dict(result)
    return result


class _Unprobeable(Exception):
    """The model cannot be timed here: its step is too slow for the probe's budget, or it does not run on a
    random batch of the data's shape."""


def _time_candidates(model, input_shape, num_classes, device, precision, channels_last, threads, batch, image,
                     result, t_start) -> None:
    """Time the candidates and write the choice into ``result`` (see :func:`probe`)."""
    precisions = (["fp32", "bf16"] if bf16_capable(device) else ["fp32"]) if precision == "auto" else [precision]
    formats = [False, True] if channels_last == "auto" and image else [bool(result["channels_last"])]
    net = copy.deepcopy(model).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen).to(device)
    y = torch.randint(0, max(num_classes, 1), (batch,), generator=gen).to(device)
    try:
        _step_time(net, x, y, "fp32", device)
    except Exception as e:           # e.g. a model of token ids, or of a dict batch: not timed on random images
        raise _Unprobeable(f"the model does not train on a random batch of shape {tuple(x.shape)}: "
                           f"{type(e).__name__}") from None
    nets = {False: net}
    xs = {False: x}
    if True in formats:
        nets[True] = copy.deepcopy(net).to(memory_format=torch.channels_last)
        xs[True] = x.contiguous(memory_format=torch.channels_last)

    def timed(cands: list, setup=None) -> dict:
        """Best step time of each candidate over ROUNDS rounds, after a warm-up round (oneDNN creates its
        kernels on the first call); candidates interleaved so that a burst of load hits them alike."""
        best = {c: float("inf") for c in cands}
        for r in range(ROUNDS + 1):
            for c in cands:
                if setup is not None:
                    setup(c)
                p, f = c if setup is None else (result["precision"], result["channels_last"])
                t = _step_time(nets[f], xs[f], y, p, device)
                if r == 0 and t > SLOW_S:
                    raise _Unprobeable(f"one step takes {t:.2f} s, too slow to time within the probe's budget")
                if r:
                    best[c] = min(best[c], t)
            if r and time.perf_counter() - t_start > BUDGET_S:     # keep the probe short on a slow machine
                break
        return best

    # precision and memory format first, on one thread: what the hardware does fast, not what the load allows
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cands = [(p, f) for p in precisions for f in formats]
    if len(cands) > 1:
        best = timed(cands)
        result["timings_ms"].update({f"{p}{'/channels_last' if f else ''}": round(t * 1e3, 2)
                                     for (p, f), t in best.items()})
        # the default candidate (fp32, contiguous) unless another is MARGIN faster
        default = (precisions[0], formats[0])
        choice = min(cands, key=lambda c: best[c])
        if best[choice] > (1 - MARGIN) * best[default]:
            choice = default
        result["precision"], result["channels_last"] = choice
    else:
        result["precision"], result["channels_last"] = cands[0]
    torch.set_num_threads(n)
    # then threads, for the chosen precision and format (a busy neighbour can make two threads slower than one;
    # bf16 suffers most)
    if threads == "auto":
        if n > 1:
            t = timed([1, n], setup=torch.set_num_threads)
            chosen = n if t[n] < (1 - THREADS_MARGIN) * t[1] else 1
            result["timings_ms"].update({f"threads={k}": round(v * 1e3, 2) for k, v in t.items()})
        else:
            chosen = n
        torch.set_num_threads(chosen)
        result["threads"] = chosen
