"""pytest set-up shared by the unit tests and nbval (notebooks/).

Notebooks executed by nbval inherit this environment: their runs go to a fresh, empty
folder, so the regression check trains for real instead of reusing existing runs.
"""
import os
import tempfile

os.environ["COOPLIB_RUNS_DIR"] = tempfile.mkdtemp(prefix="cooplib-test-runs-")
os.environ["COOPLIB_PROGRESS"] = "0"
os.environ["COOPLIB_STATIC"] = "1"  # explorers draw their static view under nbval
