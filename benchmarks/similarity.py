"""BN-statistics similarity of real and synthetic data sources through ResNet-20.

Run: python -m benchmarks.similarity
Writes benchmarks/results/similarity.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from datafree import load_dataset, similarity
from datafree.models.record import record_of
from datafree.synth import make_config, synthesize

from .common import cached_set, data_root, git_commit, machine, pretrained


def main() -> None:
    t0 = time.time()
    name = "resnet20"
    model = pretrained(name)
    spec, root = record_of(model).input_spec, data_root()
    sources = {
        "cifar10:test-exact": load_dataset("cifar10:test-exact", spec, root),
        "cifar10:test-jpeg": load_dataset("cifar10:test-jpeg", spec, root),
        "cifar10:train-exact": load_dataset("cifar10:train-exact", spec, root),
        "mnist:test (resized to 32x32, 3 channels)": load_dataset("mnist:test", spec, root),
        "gaussian noise (N(0, I) in normalized space)": synthesize(model, "gaussian", make_config("gaussian", num=1000), progress=False),
    }
    for method in ("inception", "bn-stats", "bn-stats+inception"):
        sources[f"synthetic {method} (512, 100 it)"] = cached_set(model, name, method, 512, 100, 0)[0]
    rows = []
    for src, data in sources.items():
        r = similarity(model, data)
        rows.append({"source": src, "n": r["n"], "score": round(r["score"], 5), "layers": {k: round(v, 5) for k, v in r["layers"].items()}})
        print(src, r["score"], flush=True)
    out = {"meta": {"benchmark": "similarity", "model": name, "seed": 0, "commit": git_commit(), "machine": machine(),
                    "wall_seconds": round(time.time() - t0, 1), "command": "python -m benchmarks.similarity"},
           "rows": rows}
    Path("benchmarks/results/similarity.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
