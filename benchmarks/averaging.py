"""Lookahead and weight-averaging step time: traintricks against ``pytorch_optimizer`` (Lookahead) and
``torch.optim.swa_utils`` (AveragedModel), on the ResNet-shaped parameter sets of ``benchmarks/optim.py`` (about 1M
and 10M parameters), fp32, random fixed gradients.

- ``lookahead``: one call = ``k = 5`` steps of the wrapper around ``torch.optim.SGD(momentum=0.9, foreach=True)``
  (four inner steps and one synchronization), ours vs ``pytorch_optimizer.Lookahead`` around the same inner
  optimizer; ``overhead`` is the wrapper's time over the inner optimizer's alone (5 bare steps).
- ``swa update``: ``update_parameters`` of an equal average (after the first), ours vs torch's ``AveragedModel``.

    python benchmarks/averaging.py [--rounds 15] [--out benchmarks/results/averaging.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from optim import make_params, resnet_shapes  # noqa: E402
from traintricks.evaluation import AveragedModel  # noqa: E402
from traintricks.optim import Lookahead  # noqa: E402


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=True)


def _k_steps(opt, k=5):
    def run():
        for _ in range(k):
            opt.step()
    return run


class _Holder(nn.Module):
    def __init__(self, params):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in params])


def main() -> None:
    import pytorch_optimizer as po
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "averaging.json"))
    args = ap.parse_args()
    rows = []
    for label, scale in (("1M", 1.2), ("10M", 3.8)):
        shapes = resnet_shapes(scale)
        n = sum(torch.Size(s).numel() for s in shapes)
        size = f"{label} ({n / 1e6:.2f}M, {len(shapes)} tensors)"
        pa, pb, pc = (make_params(shapes) for _ in range(3))
        ours, ref, bare = Lookahead(_sgd(pa), k=5), po.Lookahead(_sgd(pb), k=5), _sgd(pc)
        t = time_interleaved({"ours": _k_steps(ours), "ref": _k_steps(ref), "bare": _k_steps(bare)},
                             rounds=args.rounds)
        rows.append({"what": "lookahead (5 steps)", "params": size, "reference": "pytorch_optimizer",
                     "ours_ms": t["ours"] * 1e3, "ref_ms": t["ref"] * 1e3, "ratio": t["ours"] / t["ref"],
                     "overhead": t["ours"] / t["bare"] - 1, "ref_overhead": t["ref"] / t["bare"] - 1})
        src = _Holder(make_params(shapes))
        a, b = AveragedModel(src), torch.optim.swa_utils.AveragedModel(src)
        a.update_parameters(src)
        b.update_parameters(src)
        t = time_interleaved({"ours": lambda: a.update_parameters(src), "ref": lambda: b.update_parameters(src)},
                             rounds=args.rounds)
        rows.append({"what": "swa update", "params": size, "reference": "torch.optim.swa_utils",
                     "ours_ms": t["ours"] * 1e3, "ref_ms": t["ref"] * 1e3, "ratio": t["ours"] / t["ref"]})
        for r in rows[-2:]:
            print(f"{r['what']:20s} {label:4s} ours {r['ours_ms']:8.3f} ms  {r['reference']} {r['ref_ms']:8.3f} ms  "
                  f"ratio {r['ratio']:.3f}" + (f"  overhead {r['overhead']:+.1%} (theirs {r['ref_overhead']:+.1%})"
                                               if "overhead" in r else ""), flush=True)
    print()
    print(table(rows, ["what", "params", "reference", "ours_ms", "ref_ms", "ratio", "overhead", "ref_overhead"]))
    write_json(args.out, {"benchmark": "averaging", "machine": machine(), "rounds": args.rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
