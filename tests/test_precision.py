"""device.precision=auto: chosen from capability flags (fake ones here), said on the run's first line and in
metrics.json; a teacher-output cache recorded in one precision is never served to a run in another."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module

from conftest import TINY, run_kdrun
from kdrun.precision import auto_precision, cpu_flags
from kdrun.run import run_experiment

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f {extra}
bugs\t\t: sysret_ss_attrs
"""


@pytest.mark.parametrize("extra, expected", [("", frozenset()), ("avx512_bf16", {"avx512_bf16"}),
                                              ("amx_bf16 amx_tile", {"amx_bf16", "amx_tile"})])
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, extra, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    flags = cpu_flags(path)
    assert {"fpu", "avx512f"} <= flags and "sysret_ss_attrs" not in flags  # the flags line alone
    assert flags - {"fpu", "sse2", "avx2", "avx512f"} == frozenset(expected)


def test_no_cpuinfo_means_no_flags(tmp_path):
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("device, flags, cuda_bf16, expected", [
    ("cpu", set(), False, "fp32"),
    ("cpu", {"avx512f", "avx2"}, False, "fp32"),  # AVX-512 without its bf16 instructions: emulated, slower
    ("cpu", {"avx512_bf16"}, False, "bf16"),
    ("cpu", {"amx_bf16", "amx_tile"}, False, "bf16"),
    ("cpu", {"avx512_bf16"}, True, "bf16"),
    ("cuda", set(), True, "bf16"),
    ("cuda", {"avx512_bf16"}, False, "fp32"),  # on a GPU the CPU's flags do not count
])
def test_auto_precision_follows_the_hardware(device, flags, cuda_bf16, expected):
    precision, why = auto_precision(device, cpu_flags=frozenset(flags), cuda_bf16=cuda_bf16)
    assert precision == expected
    assert why and ("bf16" in why)  # the reason names what was looked for


def test_a_run_says_its_precision_first_and_in_metrics_json(tmp_path):
    for asked in ("fp32", "bf16"):
        proc = run_kdrun(tmp_path, *TINY, "strategy=scratch", "device=cpu", f"device.precision={asked}",
                         f"hydra.run.dir={tmp_path / asked}")
        assert proc.stderr.splitlines()[0] == f"computing on cpu, {asked}, channels_last"
        assert json.loads((tmp_path / asked / "metrics.json").read_text())["precision"] == asked
    proc = run_kdrun(tmp_path, *TINY, "strategy=scratch", "device=cpu", f"hydra.run.dir={tmp_path / 'auto'}")
    chosen, why = auto_precision("cpu", cpu_flags=cpu_flags(), cuda_bf16=False)
    assert proc.stderr.splitlines()[0] == f"computing on cpu, {chosen} (auto: {why}), channels_last"
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["precision"] == chosen


def test_teacher_outputs_recorded_in_one_precision_are_not_served_to_another(tmp_path):
    small = ["dataset=synthetic", "dataset.train_size=50", "dataset.test_size=20", "dataset.image_size=8",
             "batch_size=16", "epochs=2", "teacher=mlp", "student=cnn_student", "device=cpu",
             "trainer.progress=false", "strategy=kd", f"paths.outputs={tmp_path}"]

    def cache_use(name: str, precision: str) -> tuple[int, int]:
        with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*small, f"device.precision={precision}"])
        summary = run_experiment(cfg, tmp_path / name)
        return summary["teacher_cache_recorded"], summary["teacher_cache_hits"]

    assert cache_use("fp32", "fp32") == (2, 0)
    assert cache_use("bf16", "bf16") == (2, 0)  # recorded again, in bf16: fp32's files are not read
    assert cache_use("bf16_again", "bf16") == (0, 2)
    assert cache_use("fp32_again", "fp32") == (0, 2)
    assert len([p for p in (tmp_path / "teacher_outputs").iterdir() if p.is_dir()]) == 2


def test_a_refused_value_is_the_only_line(tmp_path):
    proc = run_kdrun(tmp_path, *TINY, "T=-1", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["error: T must be > 0, got -1"]
