"""The benchmark scripts run at tiny sizes: they call the library (and each other) directly, so a change
there can break one that nobody runs for weeks (pc_cost, cpr_accuracy and export had been). export.py runs one
pair (HSTU: its bundle drops timestamps)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

TINY = {
    "pc_cost.py": ["--items", "200", "--batch", "4", "--length", "8", "--steps", "1", "2", "--repeats", "1",
                   "--threads", "1"],
    "cpr_cost.py": ["--catalogs", "200", "--batch", "4", "--length", "8", "--repeats", "1", "--threads", "1"],
    "cpr_accuracy.py": ["--models", "sasrec", "--repeat-probs", "0.5", "--users", "100", "--items", "50",
                        "--poolings", "mean", "--epochs", "1", "--patience", "1", "--eval-users", "20",
                        "--max-minutes", "0.2", "--precision", "fp32", "--threads", "1"],
    "bundle_memory.py": ["--items", "300", "--dim", "16", "--batch", "4", "--length", "8", "--repeats", "1",
                         "--processes", "2", "--threads", "1"],
    "catalog_block.py": ["--items", "700", "--blocks", "128", "--dim", "16", "--batch", "4", "--length", "8",
                         "--repeats", "1", "--rounds", "1", "--threads", "1"],
    "export.py": ["--models", "hstu", "--heads", "softmax", "--items", "100", "--length", "8", "--batch", "4",
                  "--top-k", "5", "--repeats", "1", "--threads", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_script_runs_at_tiny_sizes(script, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *TINY[script], "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())  # the report it writes
