"""kdrun.report from synthetic run directories: aggregation, grouping, tables, plots, the report command."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
import yaml
from matplotlib.image import imread
from omegaconf import OmegaConf

from kdrun.sources.checkpoint import save_checkpoint
from kdrun.errors import ConfigError
from kdrun.sources.models import build_model
from kdrun.report.aggregate import group_by_seed, stat, study, swept_keys
from kdrun.report.build import write_report
from kdrun.cli.report import main as kdrun_report
from kdrun.report.jobs import find_jobs, read_sweep
from kdrun.track.loggers import EpochLogger, TensorBoardLogger, build_logger, scalar_tag
from kdrun.report.plots import plot_learning_curves

TEACHER_ACC = 97.5


def make_job(job_dir: Path, *, strategy: str = "kd", seed: int = 0, T: float = 4.0, alpha: float = 0.1,
             epochs: int = 3, final: float = 80.0, best: float | None = None, status: str = "completed",
             arch: str = "cnn_student", teacher_dir: Path | None = None, overrides: list[str] | None = None,
             checkpoint: bool = False) -> Path:
    """A run directory as kdrun writes it: config.yaml, .hydra/overrides.yaml, metrics.json(l)."""
    job_dir.mkdir(parents=True)
    config = {
        "T": T, "seed": seed, "data_seed": seed, "epochs": epochs, "batch_size": 64,
        "name": f"{strategy}_{arch}",
        "paths": {"outputs": "outputs", "teachers": "outputs/teachers"},
        "teacher": {"checkpoint": None, "epochs": 40, "seed": 0, "arch": "mlp"},
        "trainer": {"epochs": epochs, "batch_size": 64, "eval_batch_size": 1024, "progress": False},
        "dataset": {"name": "digits", "augment": {"crop_padding": 1, "hflip": False}},
        "student": {"arch": arch},
        "loss": {"name": "kd", "terms": {"ce": {"weight": alpha}, "kd": {"weight": 0.9, "T": T}}},
        "strategy": {"name": strategy},
        "device": {"name": "cpu", "precision": "auto"},
        "optim": {"name": "adamw", "lr": 0.003},
        "logger": {"name": "none"},
    }
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (job_dir / ".hydra").mkdir()
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or [f"seed={seed}", f"T={T:g}"]))
    if status != "completed":
        (job_dir / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
        return job_dir
    best = final if best is None else best
    lines = [{"epoch": e, "loss": 2.0 / e, "loss_ce": 0.5 / e, "loss_kd": 1.5 / e, "train_acc": final - 10 + e,
              "test_acc": final - epochs + e, "lr": 0.001, "seconds": 0.1, "images_per_s": 1000.0}
             for e in range(1, epochs + 1)]
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = {"status": "completed", "final_test_acc": final, "best_test_acc": best, "best_epoch": epochs,
               "epochs": epochs, "arch": arch, "params": 6090, "size_mb": 0.0232, "wall_time_s": 1.0,
               "device": "cpu", "precision": "fp32", "strategy": strategy, "dataset": "digits", "seed": seed}
    if strategy != "scratch":
        teacher_dir = teacher_dir or job_dir.parent / "teachers" / "mlp"
        metrics.update(T=T, alpha=alpha, beta=0.9, teacher_arch="mlp", teacher_test_acc=TEACHER_ACC,
                       teacher_params=85002, teacher_size_mb=0.3243, teacher_source="cache",
                       teacher_path=str(teacher_dir / "teacher.pt"))
        if checkpoint and not (teacher_dir / "teacher.pt").exists():
            save_checkpoint(teacher_dir / "teacher.pt", build_model("mlp", 1, 8, 10), test_acc=TEACHER_ACC)
    if checkpoint:
        save_checkpoint(job_dir / "checkpoints" / "last.pt", build_model(arch, 1, 8, 10))
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    return job_dir


# Final test accuracy of a T sweep: T -> one value per seed 0, 1, 2.
T_SWEEP = {1.0: [80.0, 82.0, 84.0], 4.0: [90.0, 91.0, 95.0], 16.0: [70.0, 70.0, 73.0]}
SCRATCH = [85.0, 86.0, 87.5]


def make_t_sweep(sweep_dir: Path, *, with_scratch: bool = True, checkpoint: bool = False) -> Path:
    n = 0
    for T, accs in T_SWEEP.items():
        for seed, acc in enumerate(accs):
            make_job(sweep_dir / f"{n}_T={T:g},seed={seed}", T=T, seed=seed, final=acc, best=acc + 1,
                     checkpoint=checkpoint)
            n += 1
    if with_scratch:
        for seed, acc in enumerate(SCRATCH):
            make_job(sweep_dir / f"{n}_seed={seed},strategy=scratch", strategy="scratch", seed=seed, final=acc,
                     overrides=[f"seed={seed}", "strategy=scratch"], checkpoint=checkpoint)
            n += 1
    return sweep_dir


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, min_width: int = 400, min_height: int = 250) -> None:
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path, image.shape)
    assert width <= 4000 and height <= 4000, (path, image.shape)
    assert np.ptp(image[..., :3]) > 0.2, f"{path} is blank"


# --- aggregation maths and grouping --------------------------------------------------------------------


def test_stat_is_the_mean_sample_std_and_n_of_a_known_set():
    s = stat([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.n == 4
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sample std: divides by n - 1
    assert s.std == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert s.text() == "2.50 ± 1.29" and str(s) == "2.50 ± 1.29 (n=4)"
    one = stat([5.0])
    assert one.n == 1 and math.isnan(one.std) and one.text() == "5.00 ± n/a"  # undefined, not 0
    with pytest.raises(ValueError):
        stat([])


def test_jobs_that_differ_only_in_seed_are_one_group(tmp_path):
    sweep = make_t_sweep(tmp_path / "sweep")
    make_job(sweep / "9_T=4,seed=3", T=4.0, seed=3, status="failed")
    groups = group_by_seed(read_sweep(sweep))
    by_label = {(g.strategy, g.setting.get("loss.terms.kd.T")): g for g in groups}
    assert set(by_label) == {("kd", 1.0), ("kd", 4.0), ("kd", 16.0), ("scratch", None)}
    assert [g.seeds for g in groups] == [[0, 1, 2]] * 4  # the failed seed 3 is in no group
    assert by_label["kd", 4.0].stat("final_test_acc").mean == pytest.approx(92.0)
    assert swept_keys([g for g in groups if g.distills]) == ["loss.terms.kd.T"]


def test_grouping_reads_configs_not_command_lines(tmp_path):
    """Same setting typed two ways (epochs=3 explicit vs default) is one group; seeds in other
    invocations join it; a scratch job that repeats a seed under another T is counted once."""
    make_job(tmp_path / "a", seed=0, overrides=["T=4"])
    make_job(tmp_path / "b", seed=1, overrides=["T=4", "epochs=3", "seed=1"])
    make_job(tmp_path / "c", seed=2, epochs=5, overrides=["epochs=5", "seed=2"])
    make_job(tmp_path / "s1", strategy="scratch", seed=0, T=1.0)
    make_job(tmp_path / "s2", strategy="scratch", seed=0, T=8.0)  # scratch ignores T: a repeat of s1
    s = study(find_jobs([tmp_path]))
    assert [sorted(j.path.name for j in g.jobs) for g in s.groups] == [["a", "b"], ["c"], ["s1"]]
    assert [j.path.name for j in s.duplicates] == ["s2"]
    # epochs moves trainer.epochs (and, through ${epochs}, the top-level key): one key, shown as `epochs`
    assert s.swept == ["trainer.epochs"] and s.label(s.groups[1]) == "epochs=5"
    assert s.scratch_refs == [s.groups[2]]


# --- tables and plots from synthetic metrics files -------------------------------------------------------


def test_a_temperature_sweep_gets_its_table_and_plot_with_references(tmp_path, capsys):
    sweep = make_t_sweep(tmp_path / "sweep")
    write_report(read_sweep(sweep), sweep, title="t", measure_latency=False)

    rows = read_csv(sweep / "temperature_sweep.csv")
    assert [(r["row"], r["T"]) for r in rows] == [("teacher", ""), ("scratch", ""), ("kd", "1"), ("kd", "4"),
                                                  ("kd", "16")]
    assert float(rows[0]["test_acc_mean"]) == TEACHER_ACC and rows[0]["n"] == "1" and rows[0]["test_acc_std"] == ""
    assert float(rows[1]["test_acc_mean"]) == pytest.approx(statistics.fmean(SCRATCH))
    for row, (T, accs) in zip(rows[2:], T_SWEEP.items()):
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)
        assert float(row["best_test_acc_mean"]) == pytest.approx(statistics.fmean(accs) + 1, abs=1e-4)
        assert row["n"] == "3" and row["seeds"] == "0 1 2"

    md = (sweep / "temperature_sweep.md").read_text()
    assert "| kd | cnn_student | 4 | 92.00 ± 2.65 | 93.00 ± 2.65 | 3 | 0 1 2 |" in md
    assert "![" in md and "temperature_sweep.png" in md
    assert_png(sweep / "temperature_sweep.png")

    comparison = read_csv(sweep / "comparison.csv")
    assert [(r["model"], r["trained_as"], r["n"]) for r in comparison] == [
        ("mlp", "teacher", "1"), ("cnn_student", "scratch", "3"), ("cnn_student", "kd T=1", "3"),
        ("cnn_student", "kd T=4", "3"), ("cnn_student", "kd T=16", "3")]
    assert len(read_csv(sweep / "summary.csv")) == 12  # one row per job, as before
    # Δ vs scratch: the distilled mean minus the scratch mean, Welch's p over the seeds (scipy cross-checked
    # against a direct computation in test_reproductions.py); none for the teacher and scratch rows.
    assert [r["delta_vs_scratch"] for r in comparison[:2]] == ["", ""]
    for row, accs in zip(comparison[2:], T_SWEEP.values()):
        assert float(row["delta_vs_scratch"]) == pytest.approx(statistics.fmean(accs) - statistics.fmean(SCRATCH),
                                                               abs=1e-4)
        assert float(row["welch_p"]) == pytest.approx(scipy_stats.ttest_ind(accs, SCRATCH, equal_var=False).pvalue,
                                                      rel=1e-3)
    assert "+5.83 (p=0.0" in (sweep / "comparison.md").read_text()

    out = capsys.readouterr().out
    assert "T sweep" in out and "92.00 ± 2.65" in out
    assert out.rstrip().endswith(str(sweep / "report.md"))  # the tables, then the paths of the files
    for name in ("summary.csv", "comparison.md", "temperature_sweep.csv", "temperature_sweep.png"):
        assert str(sweep / name) in out


def test_a_teacher_reported_beside_its_own_training_run_is_one_teacher_row(tmp_path):
    # reproduce's layout: <pair>/teacher/0 trains the teacher from scratch; <pair>/kd/0 distils from its last.pt
    teacher_run = make_job(tmp_path / "pair" / "teacher" / "0", strategy="scratch", arch="mlp", final=TEACHER_ACC,
                           overrides=["strategy=scratch", "student=mlp"], checkpoint=True)
    make_job(tmp_path / "pair" / "scratch" / "0", strategy="scratch", final=85.0, overrides=["strategy=scratch"])
    kd_run = make_job(tmp_path / "pair" / "kd" / "0", final=90.0)
    metrics = json.loads((kd_run / "metrics.json").read_text())
    metrics["teacher_path"] = str(teacher_run / "checkpoints" / "last.pt")
    (kd_run / "metrics.json").write_text(json.dumps(metrics))

    write_report(find_jobs([tmp_path / "pair"]), tmp_path / "report", title="t", measure_latency=False)
    comparison = read_csv(tmp_path / "report" / "comparison.csv")
    assert [(r["model"], r["trained_as"]) for r in comparison] == [
        ("mlp", "teacher"), ("cnn_student", "scratch"), ("cnn_student", "kd")]
    assert len(read_csv(tmp_path / "report" / "summary.csv")) == 3  # every job is still listed


def test_scratch_references_that_differ_in_the_swept_key_show_their_value(tmp_path):
    # make demo: scratch and kd, each with 5% and with all labels; the two scratch rows must be told apart
    accs = {("scratch", 0.05): 86.0, ("scratch", 1.0): 93.0, ("kd", 0.05): 92.0, ("kd", 1.0): 92.5}
    for n, ((strategy, fraction), acc) in enumerate(accs.items()):
        job = make_job(tmp_path / "sweep" / str(n), strategy=strategy, final=acc,
                       overrides=[f"strategy={strategy}", f"dataset.labelled_fraction={fraction}"])
        config = yaml.safe_load((job / "config.yaml").read_text())
        config["dataset"]["labelled_fraction"] = fraction
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    write_report(read_sweep(tmp_path / "sweep"), tmp_path / "sweep", title="t", measure_latency=False)
    [table] = (tmp_path / "sweep").glob("sweep_*.csv")
    rows = read_csv(table)
    swept = [c for c in rows[0] if c not in ("row", "model") and not c.startswith(("test_", "best_", "n", "seeds"))]
    assert [(r["row"], r[swept[0]], float(r["test_acc_mean"])) for r in rows] == [
        ("teacher", "", TEACHER_ACC), ("scratch", "0.05", 86.0), ("scratch", "1", 93.0), ("kd", "0.05", 92.0),
        ("kd", "1", 92.5)]


def test_a_sweep_with_failed_jobs_still_reports_and_names_them(tmp_path, capsys):
    sweep = make_t_sweep(tmp_path / "sweep", with_scratch=False)
    make_job(sweep / "9_T=8,seed=0", T=8.0, seed=0, status="failed")
    (sweep / "10_T=8,seed=1" / ".hydra").mkdir(parents=True)  # died before writing anything
    write_report(read_sweep(sweep), sweep, title="t", measure_latency=False)

    summary = {r["job"]: r for r in read_csv(sweep / "summary.csv")}
    assert summary["9_T=8,seed=0"]["status"] == "failed" and summary["9_T=8,seed=0"]["error"] == "RuntimeError: boom"
    assert "died before finishing" in summary["10_T=8,seed=1"]["error"]
    assert [r["T"] for r in read_csv(sweep / "temperature_sweep.csv")] == ["", "1", "4", "16"]  # teacher + 3
    report = (sweep / "report.md").read_text()
    assert "failed jobs" in report and "9_T=8,seed=0" in report and "RuntimeError: boom" in report
    assert "No from-scratch cnn_student" in report
    out = " ".join(capsys.readouterr().err.split())
    assert "2 of 11 job(s) failed" in out and "9_T=8,seed=0: RuntimeError: boom" in out


def test_two_swept_scalars_get_a_grid_and_a_heatmap(tmp_path):
    sweep = tmp_path / "sweep"
    n = 0
    for T in (1.0, 4.0):
        for alpha in (0.1, 0.5, 0.9):
            for seed in (0, 1):
                make_job(sweep / f"{n}_x", T=T, alpha=alpha, seed=seed, final=50 + 10 * T + 10 * alpha + seed)
                n += 1
    write_report(read_sweep(sweep), sweep, title="t", measure_latency=False)
    for stem in ("temperature_sweep", "sweep_ce.weight", "sweep_T_x_ce.weight"):
        for suffix in (".csv", ".md", ".png"):
            assert (sweep / f"{stem}{suffix}").is_file(), stem + suffix
    grid = (sweep / "sweep_T_x_ce.weight.md").read_text()
    assert "| ce.weight \\ T | 1 | 4 |" in grid
    assert "| 0.5 | 65.50 ± 0.71 (n=2) | 95.50 ± 0.71 (n=2) |" in grid
    cells = [r for r in read_csv(sweep / "sweep_T_x_ce.weight.csv") if r["row"] == "kd"]
    assert len(cells) == 6 and all(r["n"] == "2" for r in cells)
    alpha_rows = read_csv(sweep / "sweep_ce.weight.csv")
    assert [(r["T"], r["ce.weight"]) for r in alpha_rows if r["row"] == "kd"][:3] == [("1", "0.1"), ("1", "0.5"),
                                                                                         ("1", "0.9")]
    for stem in ("temperature_sweep", "sweep_ce.weight", "sweep_T_x_ce.weight"):
        assert_png(sweep / f"{stem}.png", min_width=300, min_height=200)


def test_learning_curves_are_drawn_from_metrics_jsonl_even_when_cut_short(tmp_path):
    run = make_job(tmp_path / "run", epochs=12)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 13, "loss": 0.')  # a crash mid-line
    path = plot_learning_curves(run, "a title")
    assert path == run / "learning_curves.png"
    assert_png(path, min_width=800, min_height=300)
    assert not list(run.glob(".*.tmp"))  # written through a temporary file, renamed
    assert plot_learning_curves(tmp_path) is None  # no metrics.jsonl, no picture


# --- the report command ---------------------------------------------------------------------------------


def test_the_report_command_combines_runs_and_sweeps_from_separate_invocations(tmp_path, monkeypatch, capsys):
    """A kd sweep, a scratch run made elsewhere, and a folder above another sweep: one report."""
    make_t_sweep(tmp_path / "sweeps" / "a", with_scratch=False, checkpoint=True)
    make_job(tmp_path / "runs" / "scratch0", strategy="scratch", seed=0, final=85.0, checkpoint=True)
    make_job(tmp_path / "runs" / "scratch1", strategy="scratch", seed=1, final=87.0, checkpoint=True)
    make_job(tmp_path / "more" / "2026-01-01" / "sweep" / "0_T=4,seed=3", T=4.0, seed=3, final=96.0,
             teacher_dir=tmp_path / "sweeps" / "a" / "teachers" / "mlp")  # the same teacher
    monkeypatch.chdir(tmp_path)
    assert kdrun_report(["sweeps/a", "runs/scratch0", "runs/scratch1", "more"]) == 0
    (out,) = (tmp_path / "outputs" / "reports").glob("*/*")  # Hydra-like default: outputs/reports/<date>/<time>

    rows = read_csv(out / "comparison.csv")
    assert [(r["model"], r["trained_as"], r["n"]) for r in rows] == [
        ("mlp", "teacher", "1"), ("cnn_student", "scratch", "2"), ("cnn_student", "kd T=1", "3"),
        ("cnn_student", "kd T=4", "4"), ("cnn_student", "kd T=16", "3")]
    assert float(rows[3]["test_acc_mean"]) == pytest.approx(statistics.fmean(T_SWEEP[4.0] + [96.0]))
    for row in rows:
        assert float(row["params"]) > 0 and float(row["size_mb"]) > 0
    measured = [r for r in rows if r["trained_as"] != "kd T=4"]  # the seed-3 job has no checkpoint...
    assert all(float(r["latency_ms"]) > 0 and float(r["images_per_s"]) > 0 for r in measured)
    assert all(r["latency_device"] == "cpu, 1 thread" for r in measured)
    assert rows[0]["latency_ms"] != rows[2]["latency_ms"]  # teacher and student measured apart

    md = (out / "comparison.md").read_text()
    assert "| model | trained as | params | size MB | test acc % | n | Δ vs scratch | latency ms | images/s |" in md
    sweep_rows = read_csv(out / "temperature_sweep.csv")
    assert [r["row"] for r in sweep_rows] == ["teacher", "scratch", "kd", "kd", "kd"]
    assert_png(out / "temperature_sweep.png")
    assert "sweeps/a" in (out / "report.md").read_text()
    assert capsys.readouterr().out.rstrip().endswith(str((out / "report.md").relative_to(tmp_path)))


def test_the_report_command_refuses_what_is_not_a_run(tmp_path, capsys):
    assert kdrun_report([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert kdrun_report([str(tmp_path / "empty"), "-o", str(tmp_path / "r")]) == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "is not a directory" in out and "no runs under" in out
    assert not (tmp_path / "r").exists()


def test_a_teacher_checkpoint_that_is_gone_leaves_latency_blank_and_says_why(tmp_path, monkeypatch):
    sweep = make_t_sweep(tmp_path / "s", with_scratch=False, checkpoint=True)
    (sweep / "teachers" / "mlp" / "teacher.pt").unlink()
    write_report(read_sweep(sweep), sweep, title="t")
    rows = read_csv(sweep / "comparison.csv")
    assert rows[0]["trained_as"] == "teacher" and rows[0]["latency_ms"] == ""
    assert float(rows[1]["latency_ms"]) > 0
    assert "does not exist" in (sweep / "comparison.md").read_text()


def test_a_channel_pruned_student_is_timed_as_itself_not_as_its_full_width_architecture(tmp_path):
    from kdrun.compress.prune import prune_channels
    from kdrun.report.latency import LatencyMeter

    full, pruned = build_model("cnn_teacher", 1, 8, 10), build_model("cnn_teacher", 1, 8, 10)
    prune_channels(pruned, 0.9)
    save_checkpoint(tmp_path / "full.pt", full)
    save_checkpoint(tmp_path / "pruned.pt", pruned)
    meter = LatencyMeter()
    # The pruned one first: were the two one cache entry, both would report its time.
    pruned_ms, full_ms = meter.measure(tmp_path / "pruned.pt", "cpu").ms, meter.measure(tmp_path / "full.pt", "cpu").ms
    assert pruned_ms < full_ms / 2, (pruned_ms, full_ms)


# --- loggers ----------------------------------------------------------------------------------------------


def test_the_default_logger_writes_nothing_and_unknown_names_are_refused(tmp_path):
    logger = build_logger(OmegaConf.create({"name": "none"}), tmp_path)
    assert type(logger) is EpochLogger
    logger.log_epoch({"epoch": 1, "loss": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="unknown logger 'neptune'; allowed: none, tensorboard, mlflow, wandb"):
        build_logger(OmegaConf.create({"name": "neptune"}), tmp_path)
    assert [scalar_tag(k) for k in ("loss", "loss_kd", "test_acc", "lr")] == [
        "loss/total", "loss/kd", "accuracy/test", "train/lr"]


def test_tensorboard_without_the_package_is_a_clear_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        build_logger(OmegaConf.create({"name": "tensorboard", "log_dir": "tb"}), tmp_path)


def test_tensorboard_logs_every_epoch_record(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = build_logger(OmegaConf.create({"name": "tensorboard", "log_dir": "tb"}), tmp_path)
    assert isinstance(logger, TensorBoardLogger)
    for epoch in (1, 2):
        logger.log_epoch({"epoch": epoch, "loss": 1.0 / epoch, "loss_ce": 0.5, "test_acc": 50.0 + epoch})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"loss/total", "loss/ce", "accuracy/test"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("accuracy/test")] == [(1, 51.0), (2, 52.0)]


def test_speed_only_keys_do_not_split_seed_groups(tmp_path):
    """teacher.cache and channels_last change how fast, not what is trained."""
    from kdrun.report.aggregate import setting
    from kdrun.report.jobs import read_job

    a, b = make_job(tmp_path / "a", seed=0), make_job(tmp_path / "b", seed=1)
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["teacher"]["cache"] = False
    config.setdefault("device", {})["channels_last"] = True
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    assert setting(read_job(a)) == setting(read_job(b))
    config["loss"]["T"] = 8.0  # a real setting still splits them
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    assert setting(read_job(a)) != setting(read_job(b))
