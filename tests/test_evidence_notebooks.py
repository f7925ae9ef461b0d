"""The notebooks' training results, checked with tolerances from the measured seed spread.

nbval compares the notebooks' checked cells exactly, so those print only what is exact
on any machine (counts, costs, the applied lr schedule). Accuracies differ between CPUs,
thread counts and GPUs, so they are checked here instead: each notebook is executed with
its defaults (the smoke profile) and the mean over seeds of each result it prints in its
evidence record (`tables.print_evidence`) must lie within `tables.evidence_tolerance` of
the stored reference in notebooks/<name>.ipynb.

Runs go to the session's fresh runs folder (conftest.py), so they train for real; nbval,
which executes the same notebooks later in the session, reuses these complete runs.
"""
import json

import pytest

from cooplib.base import profiles
from cooplib.report import tables

NOTEBOOKS = ["baseline", "one", "dml", "online_zoo", "branch_expansion", "robustness", "cooperative_depth", "kd_zoo"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_training_results_match_the_stored_reference_within_the_seed_spread(name, tmp_path):
    papermill = pytest.importorskip("papermill")
    source = profiles.NOTEBOOKS / f"{name}.ipynb"
    stored = tables.read_evidence(json.loads(source.read_text()))
    executed = tmp_path / source.name
    papermill.execute_notebook(str(source), str(executed), cwd=str(profiles.NOTEBOOKS), kernel_name="python3",
                               progress_bar=False)
    fresh = tables.read_evidence(json.loads(executed.read_text()))
    tolerance = tables.evidence_tolerance(stored)
    assert tables.evidence_mismatches(stored, fresh, tolerance) == [], f"tolerance {tolerance:.2f} top-1 points"
