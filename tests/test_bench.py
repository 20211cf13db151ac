"""`make bench` runs: the tiny mode of each of its scripts goes through every part and writes its JSON
(timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_tiny(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings_name"] == "tiny"
    assert not list(tmp_path.glob("outputs"))  # everything it ran lived in a temporary directory
    return proc, result


def test_bench_runs_in_tiny_mode_and_writes_bench_json(tmp_path):
    proc, result = run_tiny("bench", tmp_path)
    (pair,) = result["pairs"]
    for key in ("a_live", "a_warm_cache", "b_ratio", "b_target", "c_speedup_live"):
        assert pair[key] > 0, key
    # The sweep pays for the teacher once: the first job records every epoch, the others read them.
    jobs = pair["b_sweep_jobs"]
    assert jobs[0]["recorded_epochs"] == result["settings"]["epochs"]
    assert all(j["cache_hit_epochs"] == result["settings"]["epochs"] and j["recorded_epochs"] == 0 for j in jobs[1:])
    assert result["augmentation"]["d_vs_pil"] > 0 and result["peak_rss_mb"]["whole process"] > 0
    assert "(a) KD / student, warm cache" in proc.stdout + proc.stderr and "wrote" in proc.stderr  # table out, files err
    int8 = result["int8"]["models"]["cnn_student"]  # tiny mode; the full bench adds resnet20
    assert int8["cifar_shape"]["int8_speedup_over_torch"] > 0 and int8["digits_shape"]["onnxruntime_int8_ms"] > 0
    assert "(f) int8 onnxruntime" in proc.stdout + proc.stderr


def test_bench_folders_runs_in_tiny_mode(tmp_path):
    _, result = run_tiny("bench_folders", tmp_path)
    assert all(rate > 0 for rate in result["images_per_s"].values())
    assert result["streaming_vs_plain"] > 0 and result["in_memory_vs_plain"] > 0
