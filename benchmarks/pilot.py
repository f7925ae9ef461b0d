"""Pilot for sizing a real-data profile: the seed spread of the flagship comparisons.

A profile's seed count should come from a power calculation, and a power calculation
needs the spread of the paired differences it will estimate. This script trains the
flagship arms (baseline, ONE-3, DML-2 and its independent peers) on Fashion-MNIST at
candidate sizes over many seeds, and writes one JSON per call to `benchmarks/results/`
with, per candidate: each arm's test and training top-1 per seed, the paired
differences' standard deviation, and the seeds needed for a 95 % half-width of 1.0 and
0.5 points (`cooplib.base.stats.seeds_for_half_width`).

    python benchmarks/pilot.py --out /tmp/pilot --cluster local:12   # a GPU machine
    python benchmarks/pilot.py --quick --out /tmp/pilot-quick         # minutes on a CPU

The runs are ordinary cooplib run directories, so an interrupted pilot resumes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cooplib.engine import experiment, runs  # noqa: E402
from cooplib.engine.config import RunConfig  # noqa: E402
from cooplib.base.stats import seeds_for_half_width  # noqa: E402

ARMS = {  # name -> (method, method_args, test head(s) whose mean is the arm's accuracy)
    "baseline": ("baseline", {}, ["net"]),
    "ONE branch0": ("one", {"branches": 3}, ["branch0"]),
    "ONE-E": ("one", {"branches": 3}, ["ensemble"]),
    "DML peer": ("dml", {"peers": 2, "mutual": True}, ["peer0", "peer1"]),
    "independent peer": ("dml", {"peers": 2, "mutual": False}, ["peer0", "peer1"]),
}
COMPARISONS = [("ONE branch0", "baseline"), ("ONE-E", "baseline"), ("DML peer", "independent peer")]


def candidate_configs(cand: dict, seeds: list[int]) -> dict[tuple[str, int], RunConfig]:
    base = RunConfig(dataset="fashion-mnist", model=cand["model"], epochs=cand["epochs"], train_size=cand["train_size"],
                     test_size=None, lr=0.1, batch_size=128, progress=False, tensorboard=False)
    out = {}
    for arm, (method, args, _) in ARMS.items():
        for s in seeds:
            out[(arm, s)] = base.replace(method=method, method_args=dict(args), seed=s)
    return out


def arm_accuracy(row, arm: str, split: str = "test") -> float:
    heads = ARMS[arm][2]
    return float(np.mean([row[f"last/{split}/{h}/top1"] for h in heads]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run root for the pilot's runs")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--cluster", default=None, help="cooplib cluster spec, e.g. local:12")
    p.add_argument("--quick", action="store_true", help="tiny candidate for a smoke test")
    a = p.parse_args(argv)
    candidates = ([{"model": "resnet8", "train_size": 500, "epochs": 4}] if a.quick else
                  [{"model": "resnet20", "train_size": 10000, "epochs": 15},
                   {"model": "resnet8", "train_size": 10000, "epochs": 15},
                   {"model": "resnet20", "train_size": 5000, "epochs": 24}])
    seeds = list(range(a.seeds))
    started = time.time()
    by_cand = [candidate_configs(c, seeds) for c in candidates]
    configs = [cfg for cc in by_cand for cfg in cc.values()]
    run_dirs = experiment.run_all(configs, a.out, cluster=a.cluster)
    dirs = dict(zip([(i, key) for i, cc in enumerate(by_cand) for key in cc], run_dirs))
    finals = runs.load_runs(sorted(set(run_dirs))).set_index("run_dir")
    results = []
    for i, cand in enumerate(candidates):
        row = {**cand, "seeds": seeds, "arms": {}, "comparisons": {}}
        for arm in ARMS:
            recs = [finals.loc[str(dirs[(i, (arm, s))])] for s in seeds]
            row["arms"][arm] = {"test_top1": [arm_accuracy(r, arm) for r in recs],
                                "train_top1": [arm_accuracy(r, arm, "train") for r in recs],
                                "seconds": [float(r["seconds"]) for r in recs]}
        for b, a_ in COMPARISONS:
            d = np.subtract(row["arms"][b]["test_top1"], row["arms"][a_]["test_top1"])
            sd = float(d.std(ddof=1))
            row["comparisons"][f"{b} - {a_}"] = {"differences": d.round(4).tolist(), "mean": float(d.mean()), "sd": sd,
                                                 "seeds_for_1.0": seeds_for_half_width(sd, 1.0), "seeds_for_0.5": seeds_for_half_width(sd, 0.5)}
        results.append(row)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": device, "torch": torch.__version__,
              "command": "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])]),
              "wall_seconds": round(time.time() - started, 1), "candidates": results}
    name = f"pilot-{dt.datetime.now():%Y%m%d-%H%M%S}-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({c["model"] + f"/{c['train_size']}/{c['epochs']}ep": {
        **{k: round(float(np.mean(v["test_top1"])), 2) for k, v in c["arms"].items()},
        "train err baseline": round(100 - float(np.mean(c["arms"]["baseline"]["train_top1"])), 2),
        **{k: (round(v["mean"], 2), round(v["sd"], 2), v["seeds_for_1.0"]) for k, v in c["comparisons"].items()}}
        for c in results}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
