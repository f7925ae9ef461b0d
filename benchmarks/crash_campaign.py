"""Kill training at random moments (SIGKILL), resume, and count runs that end identical.

Each sequence trains one config in a subprocess, kills it at a random time, repeats
the kill on the resumed run a few times, lets the last resume finish, and compares the
result with an uninterrupted run of the same config: bit-identical last and best
weights, identical records (timings aside), no leftover files. Prints one line per
sequence and a JSON summary; the tests cover every write of a commit deterministically,
this checks the same property at times nobody chose.

    .venv/bin/python benchmarks/crash_campaign.py --sequences 12 --kills 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cooplib.engine import experiment, runs
from cooplib.engine.config import RunConfig

CHILD = """
import json, sys, torch
torch.set_num_threads(1)  # bit-identical results need one thread (see main)
from cooplib.engine import experiment
from cooplib.engine.config import RunConfig
experiment.run(RunConfig.from_dict(json.loads(sys.argv[1])), run_dir=sys.argv[2])
"""
METHODS = {"baseline": {}, "one": {"branches": 3}, "dml": {"peers": 2}}


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


def identical(ref: Path, other: Path) -> list[str]:
    """What differs between two complete runs of one config (empty: identical)."""
    a, b = runs.RunDir(ref), runs.RunDir(other)
    problems = b.verify() + ([] if b.state == "complete" else [f"state {b.state}"])
    if problems:
        return problems
    for which in ("last", "best"):
        if a.file_path(which).read_bytes() != b.file_path(which).read_bytes():
            problems.append(f"{which} weights differ")
    if untimed(a.records()) != untimed(b.records()):
        problems.append("records differ")
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != runs.LOCK)  # noqa: E731
    if names(ref) != names(other):
        problems.append(f"files differ: {names(other)}")
    return problems


def sequence(cfg: RunConfig, run_dir: Path, kills: int, window: tuple[float, float], rng: random.Random) -> int:
    """Kill `kills` times at random moments, then finish; return the kills that landed."""
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), str(run_dir)])
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
    experiment.run(cfg, run_dir=run_dir)
    return landed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--kills", type=int, default=3, help="kills per sequence")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--window", type=float, nargs=2, default=(2.0, 9.0), help="seconds after start to kill")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # several threads may reduce in another order from run to run
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="crash-campaign-"))
    base = dict(model="resnet8", dataset="digits", train_size=400, test_size=200, epochs=args.epochs, batch_size=64,
                lr=0.05, deterministic=True, device="cpu", progress=False, tensorboard=False)
    refs = {m: experiment.run(RunConfig(method=m, method_args=a, **base), run_dir=root / f"ref-{m}").run_dir
            for m, a in METHODS.items()}
    results = []
    for i in range(args.sequences):
        method = list(METHODS)[i % len(METHODS)]
        cfg = RunConfig(method=method, method_args=METHODS[method], **base)
        run_dir = root / f"seq{i}-{method}"
        landed = sequence(cfg, run_dir, args.kills, tuple(args.window), rng)
        problems = identical(refs[method], run_dir)
        results.append({"sequence": i, "method": method, "kills": landed, "identical": not problems, "problems": problems})
        print(f"sequence {i:2d} {method:8s} kills {landed}: {'identical' if not problems else problems}", flush=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "command": " ".join(sys.argv),
        "sequences": len(results), "kills": sum(r["kills"] for r in results),
        "identical": sum(r["identical"] for r in results),
    }
    print(json.dumps(summary))
    return 0 if summary["identical"] == summary["sequences"] else 1


if __name__ == "__main__":
    sys.exit(main())
