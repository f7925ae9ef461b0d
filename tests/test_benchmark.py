"""The throughput benchmark runs in CI-compatible time and records what it measured."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import throughput  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_writes_consistent_results(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert throughput.main(["--quick", "--methods", "baseline", "one", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    env, rows = result["env"], result["rows"]
    for key in ("device", "torch", "cuda", "cooplib_dtype", "compile", "packed", "command", "date"):
        assert key in env
    assert [r["method"] for r in rows] == ["baseline", "one"]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["cooplib_images_per_s"] / r["reference_images_per_s"])
        assert r["cooplib_s_per_50k_epoch"] == pytest.approx(50_000 / r["cooplib_images_per_s"])
        assert len(r["cooplib_epoch_seconds"]) == env["epochs"] and r["cooplib_warmup_epoch_s"] == r["cooplib_epoch_seconds"][0]
    table = capsys.readouterr().out
    assert "ratio" in table and all(r["method"] in table for r in rows)


def test_quick_precision_benchmark_has_all_four_arms(tmp_path, capsys):
    out = tmp_path / "precisions.json"
    assert throughput.main(["--quick", "--precisions", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    env, rows = result["env"], result["rows"]
    assert [r["arm"] for r in rows] == ["fp32", "fp32+cl", "bf16", "bf16+cl"]
    assert [(r["precision"], r["channels_last"]) for r in rows] == [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    for r in rows:
        assert len(r["block_images_per_s"]) == env["blocks"] and all(v > 0 for v in r["block_images_per_s"])
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
    assert rows[0]["speedup_vs_fp32"] == 1.0
    for key in ("device", "torch", "cpu_bf16", "auto_resolves_to", "loadavg_start", "command", "threads"):
        assert key in env
    assert len(env["loadavg_per_round"]) == env["blocks"] + 1 and "--precisions" in env["command"]
    assert "bf16+cl" in capsys.readouterr().out
