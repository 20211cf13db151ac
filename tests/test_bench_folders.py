"""`make bench`'s image-folder part runs in tiny mode and writes its JSON (timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_folders.py"


def test_bench_folders_runs_in_tiny_mode(tmp_path):
    out = tmp_path / "bench_folders.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings_name"] == "tiny"
    assert all(rate > 0 for rate in result["images_per_s"].values())
    assert result["streaming_vs_plain"] > 0 and result["in_memory_vs_plain"] > 0
    assert not list(tmp_path.glob("outputs"))
