"""Privacy audit of each synthesis method's samples on a CIFAR-10 ResNet: nearest real training image in pixel and
feature space against the real-vs-real baseline, leak test, closest pairs (PNG), and the teacher's membership score.

Run: python -m benchmarks.audit [--model resnet20] [--methods gaussian inception bn-stats deepinversion fast dafl rdskd cmi]
Writes benchmarks/results/audit.json for resnet20, audit_<model>.json for other models (rows: method, n, pixel_median_ratio, pixel_closest, feature_median_ratio,
nearer_train_pixel, nearer_train_feature with their p-values against random re-splits of the real images,
membership_auroc, ...) and benchmarks/results/audit[_<model>]_<method>_pairs.png.
`cifar10:train-exact` (4000) is the training proxy and `cifar10:test-exact` (1000) the held-out set.
"""
from __future__ import annotations

import argparse
import time

from datafree import load_dataset
from datafree.evaluation.audit import audit
from datafree.models.record import record_of
from datafree.synth import make_config

from .common import RowStore, cached_set, command_line, data_root, git_commit, machine, pretrained

METHODS = ("gaussian", "inception", "bn-stats", "deepinversion", "fast", "dafl", "rdskd", "cmi")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--iterations", type=int, default=100, help="pixel methods' iterations (sets shared with ptq/kw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: benchmarks/results/audit.json (resnet20), audit_<model>.json otherwise")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    tag = "" if a.model == "resnet20" else f"_{a.model}"
    a.out = a.out or f"benchmarks/results/audit{tag}.json"
    root = data_root()
    t0 = time.time()
    model = pretrained(a.model)
    train = load_dataset("cifar10:train-exact", record_of(model).input_spec, root)
    held = load_dataset("cifar10:test-exact", record_of(model).input_spec, root)
    meta = {"benchmark": "audit", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.audit", a), "train": "cifar10:train-exact", "held_out": "cifar10:test-exact"}
    store = RowStore(a.out, meta, selection=("methods",))
    for method in a.methods:
        def row(method=method) -> dict:
            # generator methods at their own defaults, pixel methods at the iterations the ptq/kw sets use
            its = getattr(make_config(method), "iterations", 0) if method in ("fast", "dafl", "rdskd", "cmi") else a.iterations
            data, _ = cached_set(model, a.model, method, a.num, its, a.seed, a.cache)
            r = audit(model, data, train, held, pairs_png=f"benchmarks/results/audit{tag}_{method}_pairs.png")
            px, ft = r["pixel"], r["feature"]
            return {"n": r["n_synthetic"], "pixel_median": px["synthetic_to_train"]["median"],
                    "pixel_median_real": px["held_out_to_train"]["median"], "pixel_median_ratio": px["median_ratio"],
                    "pixel_closest": px["synthetic_to_train"]["min"], "pixel_closest_real": px["held_out_to_train"]["min"],
                    "feature_median_ratio": ft["median_ratio"], "nearer_train_pixel": px["nearer_train_than_held_out"],
                    "nearer_train_feature": ft["nearer_train_than_held_out"],
                    "nearer_train_p_pixel": px["nearer_train_p_value"], "nearer_train_p_feature": ft["nearer_train_p_value"],
                    "nearer_train_null_p95_pixel": px["nearer_train_null_p95"],
                    "nearer_train_null_p95_feature": ft["nearer_train_null_p95"],
                    "closer_than_any_real_pixel": px["closer_than_any_held_out"],
                    "membership_auroc": r["membership_auroc"], "membership_auroc_loss": r.get("membership_auroc_loss"),
                    "iterations": its}
        r = store.run({"method": method}, row)
        print(f"{method}: pixel ratio {r['pixel_median_ratio']:.2f}, feature ratio {r['feature_median_ratio']:.2f}, "
              f"nearer train {r['nearer_train_pixel']:.2f}/{r['nearer_train_feature']:.2f} "
              f"(p {r['nearer_train_p_pixel']:.3f}/{r['nearer_train_p_feature']:.3f})", flush=True)
    store.finish(complete=set(a.methods) >= set(METHODS), wall_seconds_this_run=round(time.time() - t0, 1))


if __name__ == "__main__":
    main()
