"""Run directories: the unit of record, and their loading into pandas.

Layout of one run directory:

    config.json       the RunConfig, versions, device, start time
    metrics.jsonl     one JSON line per finished epoch (every loss term, every head's
                      top-1/top-5 in percent, lr, seconds)
    checkpoint.pt     full training state after the last finished epoch (weights,
                      optimizer, RNG); loads with torch.load(weights_only=True)
    model.safetensors weights after the last epoch; best.safetensors at the best epoch
    final.json        last and best epoch once the run is complete
    status.json       "running" / "complete" / "diverged" with a message
    events/           TensorBoard events

Every file is written atomically (temporary file + rename), so a crash never leaves a
half-written record behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FINAL = "final.json"
STATUS = "status.json"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
EVENTS = "events"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    """The epoch records of a run (an empty list before the first epoch ends)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """Rewrite metrics.jsonl atomically (used per epoch, and to trim on resume)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


def status(run_dir: Path) -> str:
    path = Path(run_dir) / STATUS
    return read_json(path).get("state", "unknown") if path.exists() else "new"


def find_runs(root) -> list[Path]:
    """Run directories under `root` (searched recursively), or the given list of them."""
    if isinstance(root, (str, Path)):
        root = Path(root)
        if (root / CONFIG).exists():
            return [root]
        return sorted(p.parent for p in root.rglob(CONFIG))
    return [Path(p) for p in root]


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}{k}": (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in d.items()}


def _entries(root) -> list[tuple[str | None, Path]]:
    """(label, run_dir) pairs: labels from a {label: run_dir} mapping (one run may carry
    several labels, e.g. the full ONE also being the 3-branch point of a sweep), else None."""
    if isinstance(root, Mapping):
        return [(str(label), Path(p)) for label, p in root.items()]
    return [(None, p) for p in find_runs(root)]


def load_runs(root) -> pd.DataFrame:
    """One row per run: its config (plain columns), status, cost, last/best metrics.

    `root`: a folder searched recursively, a list of run directories, or a mapping
    {label: run_dir} (the label becomes a `label` column). Metric columns are prefixed
    `last/` and `best/`, e.g. `last/test/net/top1`.
    """
    rows = []
    for label, run_dir in _entries(root):
        meta = read_json(run_dir / CONFIG)
        row = {"run_dir": str(run_dir), "run": run_dir.name, "status": status(run_dir)}
        if label is not None:
            row["label"] = label
        row.update(_flat("", meta["config"]))
        row.update({f"method_args.{k}": v for k, v in meta["config"].get("method_args", {}).items()})
        row["device_name"] = meta.get("device_name")
        final_path = run_dir / FINAL
        if final_path.exists():
            final = read_json(final_path)
            row.update({k: final.get(k) for k in ("params", "train_flops", "test_params", "test_flops", "seconds", "epochs_done")})
            row["best_epoch"] = final["best"]["epoch"]
            row.update(_flat("last/", final["last"]))
            row.update(_flat("best/", final["best"]))
        else:
            records = read_metrics(run_dir)
            row["epochs_done"] = len(records)
            if records:
                row.update(_flat("last/", records[-1]))
        rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(root) -> pd.DataFrame:
    """One row per (run, epoch) with the run's method/model/dataset/seed (and label) alongside."""
    frames = []
    for label, run_dir in _entries(root):
        records = read_metrics(run_dir)
        if not records:
            continue
        cfg = read_json(run_dir / CONFIG)["config"]
        df = pd.DataFrame(records)
        df.insert(0, "run", run_dir.name)
        for key in ("method", "model", "dataset", "seed"):
            df.insert(1, key, cfg[key])
        if label is not None:
            df.insert(1, "label", label)
        for key, value in cfg.get("method_args", {}).items():
            df[f"method_args.{key}"] = value if not isinstance(value, (list, dict)) else str(value)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def long_metrics(metrics: pd.DataFrame, split: str = "test", stat: str = "top1") -> pd.DataFrame:
    """Melt `split/<head>/stat` columns into rows with a `head` column (for plotting)."""
    prefix, suffix = f"{split}/", f"/{stat}"
    cols = [c for c in metrics.columns if c.startswith(prefix) and c.endswith(suffix)]
    id_cols = [c for c in metrics.columns if c in ("run", "method", "model", "dataset", "seed", "epoch") or c == "label" or c.startswith("method_args.")]
    out = metrics.melt(id_vars=id_cols, value_vars=cols, var_name="head", value_name=stat)
    out["head"] = out["head"].str[len(prefix) : -len(suffix)]
    return out
