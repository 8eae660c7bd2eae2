"""The driver of these ablation runs: one recipe run of benchmarks/train_fmnist.py with a config file.

    cd benchmarks/results/issue19_ablation
    OMP_NUM_THREADS=1 python drive.py fcC.toml fcC_s0 precision=fp32 threads=1 seed=0    # -> fcC_s0.json
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
import train_fmnist as tf  # noqa: E402

config, out, *overrides = sys.argv[1:]
seed = next((int(o[5:]) for o in overrides if o.startswith("seed=")), 0)
result = tf.run_recipe(out, config, seed, [o for o in overrides if not o.startswith("seed=")])
Path(out + ".json").write_text(json.dumps(result, indent=1))
print(out, "final", result["final_test_accuracy"], "cpu", result["train_cpu_seconds"], "to", result["cpu_time_to"])
