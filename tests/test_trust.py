"""Issue 10: tables that never lie, and messages instead of tracebacks (items 1, 2, 7-16)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hydra import initialize_config_module
from omegaconf import OmegaConf
from rich.console import Console

from conftest import KDRUN, TINY, run_kdrun
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.errors import CheckpointError, ConfigError, WriteError
from kdrun.io import atomic_torch_save, atomic_write_text
from kdrun.config.plausibility import problems, vanishing_terms, warnings, zero_weight_terms
from kdrun.run import run_experiment
from kdrun.cli.preflight import check_output_locations, compose_job
from kdrun.report.aggregate import group_by_seed, study
from kdrun.report.build import write_report
from kdrun.cli.report import main as kdrun_report
from kdrun.report.jobs import find_jobs, read_sweep
from kdrun.report.plots import plot_learning_curves, run_title
from kdrun.report.tables import comparison_table, sweep_table
from kdrun.config.resume import output_dir
from kdrun.run import check_run_config
from test_report import make_job


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def tree_digests(folder: Path) -> dict[str, str]:
    """Every file under `folder`, subfolders included."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- item 1: a refused sweep touches nothing; rows come from each job's config -------------------------


def test_a_refused_sweep_touches_no_sweep_file_and_rows_come_from_each_jobs_config(tmp_path):
    run_kdrun(tmp_path, "-m", *TINY, "T=1,16", "hydra.sweep.dir=D")
    before = digests(tmp_path / "D")
    assert {"summary.md", "summary.csv", "multirun.yaml"} <= set(before)
    swapped = run_kdrun(tmp_path, "-m", *TINY, "T=16,1", "hydra.sweep.dir=D", "resume=D", check=False)
    assert swapped.returncode == 2
    assert "sweep refused before any job ran: job 0" in swapped.stderr and "T: 1 in the run, 16 now" in swapped.stderr
    again = run_kdrun(tmp_path, "-m", *TINY, "T=4", "hydra.sweep.dir=D", check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert digests(tmp_path / "D") == before
    # Even if a job's .hydra/overrides.yaml says otherwise, its row shows what it ran (config.yaml).
    (tmp_path / "D" / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["T=16", "epochs=1"]))
    write_report(read_sweep(tmp_path / "D"), tmp_path / "R", title="t", measure_latency=False)
    rows = (tmp_path / "R" / "summary.csv").read_text().splitlines()
    assert rows[1].startswith("0,completed,1,") and rows[2].startswith("1,completed,16,")


# --- item 2: values compared as numbers -----------------------------------------------------------------


def test_t_4_and_t_4_0_are_one_group_in_every_table(tmp_path):
    make_job(tmp_path / "a" / "0", seed=0, T=4, overrides=["T=4", "seed=0"])
    make_job(tmp_path / "b" / "0", seed=1, T=4.0, overrides=["T=4.0", "seed=1"])
    make_job(tmp_path / "b" / "1", seed=1, T=8.0, overrides=["T=8.0", "seed=1"])
    jobs = find_jobs([tmp_path / "a", tmp_path / "b"])
    groups = group_by_seed(jobs)
    assert len(groups) == 2 and sorted(len(g.jobs) for g in groups) == [1, 2]
    table = sweep_table(study(jobs), "loss.terms.kd.T")
    assert [row[-2] for row in table.rows if row[0] == "kd"] == ["2", "1"]  # n: T=4 has both seeds


# --- item 7: console tables fit 80 columns --------------------------------------------------------------


def test_the_comparison_table_fits_80_columns_without_breaking_words(tmp_path):
    for seed in range(2):
        make_job(tmp_path / "s" / f"{seed}", strategy="scratch", seed=seed, arch="cnn_student")
        make_job(tmp_path / "k" / f"{seed}", strategy="kd", seed=seed, arch="cnn_student", alpha=0.5)
        make_job(tmp_path / "k2" / f"{seed}", strategy="kd", seed=seed, arch="cnn_student", alpha=0.25)
    table = comparison_table(study(find_jobs([tmp_path])), None)
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(table.rich(files="comparison.md, comparison.csv"))
    text = out.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("cnn_student", "teacher", "ce.weight=0.5", "ce.weight=0.25", "comparison.csv"):
        assert word in text, text
    assert "size MB" not in text and "size MB" in table.markdown()  # left to the files


def test_a_narrow_tables_title_and_footer_are_wrapped_at_80_columns_not_at_its_width(tmp_path):
    """Issue 23 item 17: the temperature-sweep table (four narrow columns) wrapped its own title and footer."""
    for T in (1.0, 4.0):
        make_job(tmp_path / f"T{T}", T=T, overrides=[f"T={T}"])
    table = sweep_table(study(find_jobs([tmp_path])), "loss.T")
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(table.rich(files="temperature_sweep.md, temperature_sweep.csv"))
    lines = [line.strip() for line in out.export_text().splitlines()]
    assert max(len(line) for line in lines) <= 80
    assert len(table.title) <= 80 and table.title in lines, lines
    assert "all columns: temperature_sweep.md, temperature_sweep.csv" in lines, lines


# --- item 8: messages, not tracebacks ---------------------------------------------------------------------


def test_a_full_disk_is_named_not_torchs_inline_container_error(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": FullDisk(fd, mode))
    with pytest.raises(WriteError, match="No space left on device") as caught:
        atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "last.pt")
    assert "inline_container" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_written_is_a_message(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    for arg in ("paths.outputs=afile", "hydra.run.dir=afile/x"):
        proc = run_kdrun(tmp_path, *TINY, arg, check=False)
        assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr and "Hydra's exception" not in proc.stdout + proc.stderr
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with pytest.raises(ConfigError, match="paths.outputs=ro: .* is read-only"):
        check_output_locations(["paths.outputs=ro"], cwd=tmp_path)
    with pytest.raises(ConfigError, match="resume=ro: .* is read-only"):
        check_output_locations(["resume=ro"], cwd=tmp_path)


# --- item 9: resume= must point at a run or a sweep ----------------------------------------------------


def test_resume_into_a_folder_without_a_run_is_refused(tmp_path):
    make_job(tmp_path / "date" / "10-00-00_kd", seed=0)
    (tmp_path / "empty").mkdir()
    for folder in ("date", "empty"):
        with pytest.raises(ConfigError, match=f"resume={tmp_path / folder} holds no kdrun run or sweep"):
            output_dir(str(tmp_path / folder), "", sweep=False)
    assert output_dir(str(tmp_path / "date" / "10-00-00_kd"), "", sweep=False)  # a run: accepted
    proc = run_kdrun(tmp_path, *TINY, f"resume={tmp_path / 'empty'}", check=False)
    assert proc.returncode == 2 and "holds no kdrun run or sweep" in proc.stderr
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.slow
def test_a_resume_with_another_config_is_refused_and_leaves_every_file_of_the_run_as_it_was(tmp_path):
    run_kdrun(tmp_path, *TINY, "strategy=scratch", "hydra.run.dir=run")
    before = tree_digests(tmp_path / "run")
    for resume in (["resume=run"], ["hydra.run.dir=run", "resume=auto"]):
        proc = run_kdrun(tmp_path, *TINY, "strategy=scratch", "epochs=2", *resume, check=False)
        assert proc.returncode == 2 and "trainer.epochs: 1 in the run, 2 now" in proc.stderr, proc.stderr
        assert tree_digests(tmp_path / "run") == before  # Hydra's .hydra/ files included: the refusal comes before Hydra writes them


# --- item 10: checkpoint messages -----------------------------------------------------------------------


@pytest.mark.parametrize("kind, message", [
    ("random", "not a kdrun checkpoint: kdrun checkpoints are the zip archives"),
    ("pickle", "not a kdrun checkpoint: kdrun checkpoints are the zip archives"),
    ("empty", "is an empty file (0 bytes)"),
    ("directory", "is a directory"),
    ("zip", "not a readable kdrun checkpoint"),
])
def test_checkpoint_messages_say_what_the_file_is_and_never_suggest_an_unsafe_load(tmp_path, kind, message):
    path = tmp_path / "x.pt"
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "pickle":
        path.write_bytes(b"\x80\x02csubprocess\ncall\nq\x00.")  # an old-style pickle that would run code
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("junk/data.pkl", b"not a pickle")
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        load_checkpoint(path)
    assert "weights_only=False" not in str(caught.value) and str(caught.value).strip()


def test_a_pickled_object_a_weights_only_load_refuses_is_named_without_the_unsafe_advice(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": "kdrun-checkpoint", "obj": zipfile.ZipInfo("x")}, buffer)
    (tmp_path / "evil.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="weights-only load does not allow") as caught:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(caught.value)


# --- item 11: values accepted but meaningless -----------------------------------------------------------


def composed(*overrides: str):
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        return compose_job(["experiment=quickstart", *overrides])


class FakeData:
    def __init__(self, n: int, size: int):
        self.train_y = torch.zeros(n)
        self.image_size = size


@pytest.mark.parametrize("overrides, data, fragment", [
    (("optim.warmup_epochs=100", "epochs=1"), None, "optim.warmup_epochs=100 with epochs=1"),
    (("batch_size=100000",), FakeData(1437, 8), "batch_size=100000 is larger than the training split"),
    (("dataset.augment.crop_padding=100",), FakeData(1437, 8), "crop_padding=100 on 8x8 images"),
])
def test_meaningless_values_are_refused(overrides, data, fragment):
    assert any(fragment in p for p in problems(composed(*overrides), data))


def test_a_loss_whose_every_term_weighs_zero_is_refused():
    with pytest.raises(ConfigError, match=r"every term of loss=kd has weight 0 \(loss.terms.ce.weight=0, "
                                          r"loss.terms.kd.weight=0\): the loss is zero"):
        check_run_config(composed("loss.terms.ce.weight=0", "loss.terms.kd.weight=0"))


def test_ordinary_values_pass_and_a_large_crop_is_warned_about():
    assert problems(composed(), FakeData(1437, 8)) == []
    assert warnings(composed(), FakeData(1437, 8)) == []
    assert "pads more than a quarter" in warnings(composed("dataset.augment.crop_padding=3"), FakeData(1437, 8))[0]


def test_a_vanishing_term_is_found_whatever_its_name_and_a_term_weighed_zero_is_not():
    """Issue 23 item 14, term-agnostic: the check reads the step's named terms, not a list of losses."""
    off = zero_weight_terms(OmegaConf.create({"terms": {"crd": {"weight": 1.0}, "kd": {"weight": 0.0}}}))
    assert off == {"kd"}
    assert vanishing_terms(["ce", "crd", "kd"], [2.3, 1e-9, 0.0], off) == ["crd"]
    assert vanishing_terms(["ce", "peer0_kd", "peer1_kd"], [2.3, 0.0, 0.4], frozenset()) == ["peer0_kd"]
    assert vanishing_terms(["kd"], [3e-9], frozenset()) == ["kd"]  # alone: below 1e-8 outright
    assert vanishing_terms(["ce", "kd"], [0.23, 2.5e-7], frozenset()) == []  # an untrained teacher: weak, not gone
    assert vanishing_terms(["ce", "kd"], [2.3, 0.01], frozenset()) == []
    assert zero_weight_terms(composed("loss=fitnets").loss) == frozenset()  # every listed term weighs something


FAST_KD = ("teacher=mlp", "teacher.epochs=1", "epochs=1", "dataset.limit_train=256", "dataset.limit_test=64",
           "trainer.progress=false")


@pytest.mark.parametrize("overrides, terms", [
    (("T=1e9",), "kd"), (("T=1e-9",), "kd"), (("loss=dkd", "T=1e9", "loss.terms.dkd.warmup_epochs=0"), "tckd, nckd"),
])
def test_a_term_that_is_numerically_zero_at_the_first_step_is_refused_with_the_numbers(tmp_path, overrides, terms):
    """T=1e9 trained to chance with loss_kd = 0.0; T=1e-9 made the term ~1e-10. Any loss: DKD's terms too."""
    cfg = composed(*FAST_KD, f"paths.outputs={tmp_path}", *overrides)
    with pytest.raises(ConfigError) as refused:
        run_experiment(cfg, tmp_path / "run")
    message = " ".join(str(refused.value).split())
    assert f"at the first step the loss term{'s' if ',' in terms else ''} {terms} " in message, message
    T = next(float(o.split("=")[1]) for o in overrides if o.startswith("T="))
    assert "numerically zero (ce = " in message and f"T={T:g})" in message
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_term_weighed_zero_on_purpose_is_no_vanishing_term(tmp_path):
    """loss.terms.ce.weight=0: the ce term is 0 at every step, as asked (pure distillation)."""
    cfg = composed(*FAST_KD, f"paths.outputs={tmp_path}", "loss.terms.ce.weight=0")
    assert run_experiment(cfg, tmp_path / "run")["status"] == "completed"


def test_a_batch_larger_than_the_data_is_refused_by_the_cli_and_leaves_no_run_folder(tmp_path):
    proc = run_kdrun(tmp_path, *TINY, "batch_size=100000", check=False)
    assert proc.returncode == 2 and "batch_size=100000 is larger than the training split" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # item 14: nothing ran, no folder (nor Hydra's outputs/runs/<date>)


# --- item 12: a sweep checks every job first; a missing dataset said once -------------------------------


def test_a_bad_value_in_the_last_job_stops_the_sweep_before_the_first_job(tmp_path):
    proc = run_kdrun(tmp_path, "-m", *TINY, "loss.terms.ce.weight=0.5,0.25,0", "loss.terms.kd.weight=0", check=False)
    assert proc.returncode == 2 and "job 2" in proc.stderr and "the loss is zero" in proc.stderr
    assert not (tmp_path / "outputs" / "sweeps").exists() or not list((tmp_path / "outputs" / "sweeps").rglob("*.json"))
    assert "Launching" not in proc.stdout + proc.stderr


def test_an_offline_dataset_error_is_printed_once_per_sweep(tmp_path):
    proc = run_kdrun(tmp_path, "-m", "dataset=mnist", "dataset.download=false", f"dataset.root={tmp_path}",
                     "teacher=mlp", "student=mlp", "epochs=1", "seed=0,1,2", "hydra.sweep.dir=S", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("Looked in:") == 2  # the first job's error, and its first line in the summary
    assert proc.stderr.count("not found, as for job 0") >= 2


# --- item 13: the umask --------------------------------------------------------------------------------------


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


# --- item 14: kdrun-report edge cases ------------------------------------------------------------------


def test_a_config_folder_is_not_a_run(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("T: 4\n")
    assert kdrun_report([str(tmp_path / "conf"), "--out", str(tmp_path / "r")]) == 2


def test_a_corrupt_config_is_a_failed_job_not_a_group(tmp_path):
    make_job(tmp_path / "0", seed=0)
    make_job(tmp_path / "1", seed=1)
    (tmp_path / "1" / "config.yaml").write_text("[unclosed")
    jobs = find_jobs([tmp_path])
    assert [j.status for j in jobs] == ["completed", "failed"] and "config.yaml is unreadable" in jobs[1].error
    assert len(group_by_seed(jobs)) == 1


def test_an_interrupted_run_is_listed_with_its_resume_command(tmp_path, capsys):
    make_job(tmp_path / "0", seed=0)
    make_job(tmp_path / "1", seed=1, status="failed")
    (tmp_path / "1" / "metrics.json").write_text(json.dumps(
        {"status": "interrupted", "error": "Interrupted: Ctrl-C", "resume": "kdrun seed=1 resume=X"}))
    s = write_report(find_jobs([tmp_path]), tmp_path / "r", title="t", measure_latency=False)
    assert s.failed == [] and len(s.interrupted) == 1
    out = capsys.readouterr().err
    assert "interrupted — resume with kdrun seed=1 resume=X" in out and "failed" not in out


# --- item 15: the CLI's own words, and folders left behind -------------------------------------------------


def test_help_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path):
    # `kdrun --help | head -3`: the reader is gone before kdrun (seconds to start) writes its help
    proc = subprocess.Popen([str(KDRUN), "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_version_help_and_cfg_are_kdruns(tmp_path):
    assert run_kdrun(tmp_path, "--version").stdout.strip() == "kdrun 0.1.0"
    assert run_kdrun(tmp_path, "--help").stdout.startswith("kdrun: config-driven knowledge-distillation")
    cfg = run_kdrun(tmp_path, "--cfg", "job", "experiment=quickstart").stdout
    assert "${" not in cfg and "epochs: 20" in cfg
    assert "install=bash" in (Path(__file__).parents[1] / "README.md").read_text()


def test_summary_md_shows_only_the_overrides_that_vary(tmp_path):
    for seed, T in ((0, 1.0), (1, 4.0)):
        make_job(tmp_path / "S" / str(seed), seed=seed, T=T, overrides=[f"T={T:g}", "epochs=3", "batch_size=64"])
    write_report(read_sweep(tmp_path / "S"), tmp_path / "S", title="t", measure_latency=False)
    header = (tmp_path / "S" / "summary.md").read_text().splitlines()[0]
    assert "| T |" in header and "epochs" not in header and "batch_size" not in header
    assert "batch_size" in (tmp_path / "S" / "summary.csv").read_text().splitlines()[0]


def test_an_empty_dataset_root_is_refused_and_makes_no_folder(tmp_path):
    proc = run_kdrun(tmp_path, "dataset=fashion_mnist", "dataset.root=", "student=mlp", "teacher=mlp", "epochs=1",
                     check=False)
    assert proc.returncode == 2 and "dataset.root" in proc.stderr and "is empty" in proc.stderr
    assert not (tmp_path / "FashionMNIST").exists() and not (tmp_path / "outputs").exists()


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import torchvision.datasets

    from kdrun.sources.data import DatasetNotFoundError, load_dataset

    def offline(root, download):
        Path(root).mkdir(parents=True)  # what torchvision does before it fetches
        raise OSError("offline")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    (tmp_path / "keep").mkdir()
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        load_dataset({"name": "cifar10", "root": str(tmp_path / "data" / "sub"), "download": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


# --- item 16: plots for a paper ------------------------------------------------------------------------------


def test_learning_curves_are_also_vector_files_and_titled_by_seed_and_t(tmp_path):
    lines = [{"epoch": e, "loss": 13.0 / e, "loss_ce": 0.03 / e, "loss_kd": 13.0 / e, "train_acc": 50.0 + e,
              "test_acc": 60.0 + e} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    png = plot_learning_curves(tmp_path, run_title("kd", "cnn_student", "digits", 3, 4.0))
    assert png.is_file() and (tmp_path / "learning_curves.svg").read_text().lstrip().startswith("<?xml")
    assert run_title("kd", "cnn_student", "digits", 3, 4.0) == "kd: cnn_student on digits (seed 3, T=4)"


def test_a_report_writes_every_plot_as_svg_too(tmp_path):
    for seed in range(2):
        for T in (1.0, 4.0):
            make_job(tmp_path / "S" / f"{seed}_{T:g}", seed=seed, T=T)
    write_report(find_jobs([tmp_path / "S"]), tmp_path / "r", title="t", measure_latency=False)
    pngs = sorted(p.stem for p in (tmp_path / "r").glob("*.png"))
    assert pngs and pngs == sorted(p.stem for p in (tmp_path / "r").glob("*.svg"))


def test_the_loss_panel_uses_a_log_scale_when_terms_differ_by_orders_of_magnitude(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    scales = []
    monkeypatch.setattr(Axes, "set_yscale", lambda self, value, **kw: scales.append(value))
    lines = [{"epoch": e, "loss": 13.0, "loss_ce": 0.03, "loss_kd": 13.0, "test_acc": 60.0} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot_learning_curves(tmp_path, "t")
    assert scales == ["log"]
