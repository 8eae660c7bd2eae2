"""Throughput of the augmentation policies (images/s): ours, batched on tensors, against a per-image Pillow loop
doing the same operation mix (the papers' implementation: tensor -> PIL image -> ops -> tensor, with the same
operations, ranges and draws), and against kornia's ``kornia.augmentation.auto`` policies where kornia imports
(torchvision's PyPI wheel is built for CUDA torch and does not load on the CPU-only torch here). Interleaved rounds,
medians.

| policy | ours | Pillow loop | kornia |
|---|---|---|---|
| RandAugment N=2, M=9 (of 30) | RandAugment(2, 9) | the same 14 ops per image | RandAugment(n=2, m=9) |
| TrivialAugment (wide) | TrivialAugment() | the same | TrivialAugment() |
| AutoAugment CIFAR-10 | AutoAugment("cifar10") | the same table | AutoAugment("cifar10") |

on a batch of 256 RGB 32 x 32 (CIFAR-sized) and 256 grey 28 x 28 (Fashion-MNIST-sized) uint8 images (kornia
takes float images in [0, 1]; ours is timed on both). One thread unless ``--threads``.

    python benchmarks/augment_policies.py [--rounds 7] [--threads 1] [--out benchmarks/results/augment_policies.json]
    (kornia: run with a Python where it imports, e.g. /work/venvs/augE/bin/python, see docs/benchmarks.md)
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from traintricks.data.policies import (POLICIES, RANDAUGMENT_OPS, RANGES, SIGNED, AutoAugment,  # noqa: E402
                                       RandAugment, TrivialAugment)

PIL_OPS = {
    "identity": lambda im, v: im,
    "invert": lambda im, v: ImageOps.invert(im),
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "posterize": lambda im, v: ImageOps.posterize(im, int(v)),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, -v, 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -v)),
    "rotate": lambda im, v: im.rotate(v),
}


def pil_value(name: str, f: float, sign: float, size: tuple[int, int], ranges: dict) -> float:
    """The parameter of ``name`` at magnitude fraction ``f`` (the same mapping as traintricks.data.policies)."""
    r = ranges.get(name, 0.0) * f * (sign if name in SIGNED else 1.0)
    if name in ("brightness", "color", "contrast", "sharpness"):
        return 1 + r
    if name == "posterize":
        return 8 - round(r)
    if name == "solarize":
        return 256 * (1 - r)
    if name == "translate_x":
        return round(r * size[1])
    if name == "translate_y":
        return round(r * size[0])
    return r


def pil_policy(kind: str):
    """Per-image Pillow loop: tensor batch -> PIL images -> the policy's ops -> tensor batch."""
    rng = random.Random(0)
    table = POLICIES["cifar10"]

    def steps(size):
        if kind == "randaugment":
            return [(rng.choice(RANDAUGMENT_OPS), 9 / 30, RANGES["standard"]) for _ in range(2)]
        if kind == "trivialaugment":
            return [(rng.choice(RANDAUGMENT_OPS), rng.randrange(31) / 30, RANGES["wide"])]
        sub = rng.choice(table)
        return [(op, m / 9, RANGES["standard"]) for op, p, m in sub if rng.random() < p]

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.permute(0, 2, 3, 1).numpy()
        grey = arr.shape[3] == 1
        out = []
        for a in arr:
            im = Image.fromarray(a[:, :, 0] if grey else a, "L" if grey else "RGB")
            for name, f, ranges in steps(a.shape[:2]):
                im = PIL_OPS[name](im, pil_value(name, f, rng.choice((1.0, -1.0)), a.shape[:2], ranges))
            out.append(np.asarray(im))
        res = torch.from_numpy(np.stack(out))
        return res.unsqueeze(1) if grey else res.permute(0, 3, 1, 2)
    return run


def kornia_policy(kind: str):
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    if kind == "randaugment":
        return K.auto.RandAugment(n=2, m=9)
    if kind == "trivialaugment":
        return K.auto.TrivialAugment()
    return K.auto.AutoAugment("cifar10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/augment_policies.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = {"randaugment": RandAugment(2, 9), "trivialaugment": TrivialAugment(), "autoaugment": AutoAugment("cifar10")}
    rows, kornia_version = [], None
    try:
        import kornia
        kornia_version = kornia.__version__
    except ImportError:
        pass
    for shape in ((3, 32, 32), (1, 28, 28)):
        g = torch.Generator().manual_seed(0)
        x8 = torch.randint(0, 256, (args.batch, *shape), dtype=torch.uint8, generator=g)
        xf = x8.float() / 255
        for kind, policy in ours.items():
            gen = torch.Generator().manual_seed(1)
            fns = {"ours uint8": lambda p=policy: p(x8, generator=gen),
                   "ours float": lambda p=policy: p(xf, generator=gen),
                   "pillow loop": lambda f=pil_policy(kind): f(x8)}
            k = kornia_policy(kind)
            if k is not None and shape[0] == 3:        # kornia's colour ops need RGB
                fns["kornia"] = lambda k=k: k(xf)
            times = time_interleaved(fns, rounds=args.rounds, min_time=0.2, warmup=2)
            row = {"policy": kind, "images": f"{args.batch}x{'x'.join(map(str, shape))}"}
            for name, t in times.items():
                row[f"{name} img/s"] = round(args.batch / t)
            row["ours uint8 / pillow"] = times["pillow loop"] / times["ours uint8"]
            if "kornia" in times:
                row["ours float / kornia"] = times["kornia"] / times["ours float"]
            rows.append(row)
            print(row, flush=True)
    cols = ["policy", "images", "ours uint8 img/s", "ours float img/s", "pillow loop img/s", "kornia img/s",
            "ours uint8 / pillow", "ours float / kornia"]
    print(table(rows, cols))
    write_json(args.out, {"machine": machine(), "threads": args.threads, "kornia": kornia_version,
                          "pillow": Image.__version__, "rows": rows})


if __name__ == "__main__":
    main()
