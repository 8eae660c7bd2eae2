"""Image-folder data throughput (images/s), on PNGs generated into a temporary folder.

1. **Decode + cache**: the ``folder`` source's first load (Pillow decode of every file, the uint8 cache written)
   against a plain Pillow + ``torch.utils.data`` loop over the same files (a ``Dataset`` that opens, converts and
   returns each image as a tensor; a ``DataLoader`` with the same batch size, 0 workers), then the second load
   served from the cache: the ratio first / cached (the issue asks >= 10x).
2. **Streaming**: one epoch of the streamed training loader (``data.stream = true``: decode in 0, 1 or 2
   ``DataLoader`` workers, standardization and collation in the main process) against the in-memory
   ``TensorLoader`` over the decoded tensors; same batches, no augmentation.

Each figure is the best of ``--rounds`` runs (the machine is shared; the best is the least disturbed).

    python benchmarks/data.py [--images 2000] [--size 32] [--rounds 3] [--out benchmarks/results/data.json]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, write_json  # noqa: E402

quiet_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from traintricks.data import load_data  # noqa: E402
from traintricks.data.sources import CACHE_NAME, folder  # noqa: E402
from traintricks.data.streaming import split_loader  # noqa: E402

BATCH = 128


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        d = root / "train" / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(f)
        files.append(f)
    return sorted(files)


class PlainFiles(torch.utils.data.Dataset):
    """What one writes by hand: open with Pillow, RGB, to a (3, H, W) uint8 tensor."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            a = np.array(im.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(a).permute(2, 0, 1), i % 10


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/data.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tt-data-bench-"))
    try:
        t = time.perf_counter()
        files = make_folder(root, a.images, a.size)
        print(f"{a.images} PNGs of {a.size}x{a.size} RGB written in {time.perf_counter() - t:.1f} s ({root})")
        n = a.images

        def first_load():
            (root / CACHE_NAME).unlink(missing_ok=True)
            folder(str(root), stream=False)

        def plain_loop():
            for _ in torch.utils.data.DataLoader(PlainFiles(files), batch_size=BATCH, num_workers=0):
                pass

        t_first = best(first_load, a.rounds)
        t_plain = best(plain_loop, a.rounds)
        t_cached = best(lambda: folder(str(root), stream=False), a.rounds)
        rows = [{"what": "folder source, first load (decode + write cache)", "images/s": n / t_first},
                {"what": "plain Pillow + torch.utils.data loop (decode only)", "images/s": n / t_plain},
                {"what": "folder source, cached load", "images/s": n / t_cached}]
        ratio = t_first / t_cached
        print(table(rows, ["what", "images/s"]))
        print(f"cached load: {ratio:.1f}x faster than the first (>= 10x asked: {'yes' if ratio >= 10 else 'NO'})")

        mem = load_data("folder", root=str(root), val_size=0)
        stream_rows = []

        def epoch(loader):
            for _ in loader:
                pass
        t_mem = best(lambda: epoch(split_loader(mem, "train", BATCH, shuffle=True)), a.rounds)
        n_train = len(mem.train_y)
        stream_rows.append({"loader": "in-memory TensorLoader", "workers": "-", "images/s": n_train / t_mem})
        for w in (0, 1, 2):
            st = load_data("folder", root=str(root), val_size=0, stream=True, workers=w)
            loader = split_loader(st, "train", BATCH, shuffle=True)
            epoch(loader)                                                  # workers started (persistent)
            t_w = best(lambda: epoch(loader), a.rounds)
            stream_rows.append({"loader": "streamed StreamLoader", "workers": w, "images/s": n_train / t_w})
            loader = None                                                  # its workers end
        print(table(stream_rows, ["loader", "workers", "images/s"]))
        write_json(a.out, {"machine": machine(), "images": n, "size": a.size, "batch": BATCH,
                           "decode": rows, "cached_over_first": ratio, "streaming": stream_rows})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
