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
