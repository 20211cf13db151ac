"""Optuna studies (hydra/sweeper=optuna, kdrun[tune]): the objective a job returns, refusals before any trial,
what a study leaves, a killed study going on without rerunning a finished trial, best.yaml running again."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import KDRUN, only_run_dir, run_kdrun

optuna = pytest.importorskip("optuna")

from kdrun.errors import ConfigError  # noqa: E402
from kdrun.tune.objective import objective_names, objective_values  # noqa: E402
from kdrun.tune.preflight import validation_override  # noqa: E402
from kdrun.tune.space import parse_space  # noqa: E402
from kdrun.tune.study import SWEEP, make_sampler, next_job_number, retry_interrupted  # noqa: E402

# digits, a 1-epoch teacher and student on 256 training images: a trial takes a second or two
STUDY = ["-m", "hydra/sweeper=optuna", "experiment=quickstart", "device=cpu", "epochs=1", "teacher.epochs=1",
         "dataset.limit_train=256", "trainer.progress=false", "T=interval(1,16)", "loss.terms.ce.weight=interval(0,1)",
         "hydra.sweep.dir=study"]


def trials(sweep: Path) -> list:
    return optuna.load_study(study_name="kdrun", storage=f"sqlite:///{sweep / 'study.db'}").get_trials()


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


# ---- the search space and the objective, without running anything ----------------------------------------

def test_search_space_reads_hydra_sweep_grammar():
    space = parse_space(["seed=1", "T=interval(1,16)", "optim.lr=tag(log,interval(1e-4,1e-1))", "epochs=3",
                         "trainer.batch_size=range(32,129,32)", "teacher=mlp,cnn_teacher", "epochs=tag(int,interval(2,5))",
                         "loss.terms.ce.weight=interval(0,1)", "loss.terms.ce.weight=0.5"])  # the later of two wins
    params = {p.key: p for p in space.params}
    assert space.fixed == ("seed=1", "loss.terms.ce.weight=0.5")
    assert (params["T"].kind, params["T"].low, params["T"].high, params["T"].log) == ("float", 1.0, 16.0, False)
    assert params["optim.lr"].log and params["optim.lr"].low == pytest.approx(1e-4)
    assert (params["trainer.batch_size"].kind, params["trainer.batch_size"].high) == ("int", 128)
    assert params["teacher"].choices == ("mlp", "cnn_teacher")
    assert (params["epochs"].kind, params["epochs"].low, params["epochs"].high) == ("int", 2, 5)
    assert space.overrides({"T": 2.5, "optim.lr": 0.01, "trainer.batch_size": 64, "teacher": "mlp", "epochs": 3}) == [
        "seed=1", "loss.terms.ce.weight=0.5", "T=2.5", "optim.lr=0.01", "epochs=3", "trainer.batch_size=64", "teacher=mlp"]


@pytest.mark.parametrize("bad", [["T=interval(4,1)"], ["epochs=1"], ["optim.lr=tag(log,interval(0,1))"],
                                 ["T=interval(1,4)", "T=2"]])
def test_bad_search_space_is_refused(bad):
    with pytest.raises(ConfigError):
        parse_space(bad)


def test_objective_is_a_validation_metric_read_from_the_jobs_summary():
    assert objective_names("val_acc") == ["val_acc"]
    assert objective_names(["val_acc", "params"]) == ["val_acc", "params"]
    for test_metric in ("test_acc", "final_test_acc", "best_test_acc"):
        with pytest.raises(ConfigError, match="test split"):
            objective_names(test_metric)
    summary = {"status": "completed", "final_val_acc": 81.5, "best_val_acc": 83.0, "params": 6090}
    assert objective_values(summary, ["val_acc", "params"]) == [81.5, 6090.0]
    with pytest.raises(ValueError, match="no final_val_acc"):  # a run without a validation split
        objective_values({"status": "completed", "final_test_acc": 80.0}, ["val_acc"])


def test_a_resumed_study_samples_new_points():
    """A sampler seeded as at the study's start would draw the finished trials' parameters again."""
    cfg = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    draws = []
    for before in (0, 3):
        study = optuna.create_study(sampler=make_sampler(cfg, before))
        draws.append(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params["x"])
    assert draws[0] != draws[1]
    again = optuna.create_study(sampler=make_sampler(cfg, 0))
    assert again.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params["x"] == draws[0]


def test_a_dataset_without_a_validation_split_gets_one():
    cases = {"digits": "dataset.val_fraction=0.2",  # lists the key, at 0
             "fashion_mnist": "+dataset.val_fraction=0.2",  # does not list it
             "image_folder": None}  # its val/ folder, or its own hold-out (val_fraction null)
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        for dataset, expected in cases.items():
            assert validation_override(compose("config", overrides=[f"dataset={dataset}"])) == expected
            assert validation_override(compose("config", overrides=[f"dataset={dataset}",
                                                                    "++dataset.val_fraction=0.1"])) is None


# ---- refused before the first trial: rc 2, one line, no folder ----------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["objective=test_acc"], "objective=test_acc is measured on the test split"),
    (["objective=best_test_acc"], "objective=best_test_acc is measured on the test split"),
    (["T=interval(-1,4)"], "search space refused before any trial: at T=-1.0, loss.terms.ce.weight=0.0: T must be > 0"),
    (["T=interval(1"], "search space refused before any trial: 'T=interval(1' is not Hydra's override grammar"),
    (["teacher=mlp,no_such_teacher"], "teacher=no_such_teacher: no such teacher option; did you mean"),
])
def test_refused_before_any_trial(tmp_path, args, message):
    proc = run_kdrun(tmp_path, *STUDY, *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join((proc.stdout + proc.stderr).split())
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "study").exists() and not (tmp_path / "outputs").exists()


# ---- a study end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_study_optimises_validation_accuracy_and_leaves_its_files(tmp_path):
    proc = run_kdrun(tmp_path, *STUDY, "hydra.sweeper.n_trials=3", "hydra.sweeper.confirm_seeds=2")
    sweep = tmp_path / "study"
    assert "no validation split" in proc.stderr  # digits has none: one is held out, and the sweep says so
    done = trials(sweep)
    assert [t.state for t in done] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in done:  # the value Optuna holds is the job's last-epoch validation accuracy
        job = sweep / str(trial.user_attrs["job"])
        assert trial.value == metrics(job)["final_val_acc"]
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert config["dataset"]["val_fraction"] == 0.2
        assert (config["T"], config["loss"]["terms"]["ce"]["weight"]) == (trial.params["T"], trial.params["loss.terms.ce.weight"])

    rows = list(csv.DictReader((sweep / "study.csv").open()))
    assert [float(r["val_acc"]) for r in rows] == [round(t.value, 4) for t in done]
    assert "Best: trial" in (sweep / "study.md").read_text()
    for stem in ("optimization_history", "param_importances", "slice"):
        assert (sweep / f"{stem}.png").stat().st_size > 0 and (sweep / f"{stem}.svg").stat().st_size > 0
    assert (sweep / "summary.csv").is_file() and (sweep / "comparison.md").is_file()  # the sweep's own report

    # the best setting re-run on new seeds beside scratch, measured on test: Δ and Welch's p
    confirm = sweep / "confirm"
    best = max(done, key=lambda t: t.value)
    assert sorted(p.name for p in confirm.iterdir() if p.is_dir()) == [
        *(f"job{best.user_attrs['job']}_{kind}_seed{s}" for kind in ("kd", "scratch") for s in (1, 2))]
    assert metrics(confirm / f"job{best.user_attrs['job']}_kd_seed1")["T"] == best.params["T"]
    assert metrics(confirm / f"job{best.user_attrs['job']}_scratch_seed2")["strategy"] == "scratch"
    comparison = (confirm / "comparison.md").read_text()
    assert "Δ vs scratch" in comparison and "(p=" in comparison
    assert comparison.split("\n", 1)[1].strip() in (sweep / "study.md").read_text()

    # best.yaml is the best trial again, as a single run
    run_kdrun(tmp_path, "--config-path", str(sweep), "--config-name", "best")
    rerun = metrics(only_run_dir(tmp_path))
    assert (rerun["T"], rerun["terms"]["ce"]) == (best.params["T"], best.params["loss.terms.ce.weight"])
    assert rerun["final_val_acc"] == best.value


@pytest.mark.slow
def test_a_killed_study_goes_on_without_rerunning_a_finished_trial(tmp_path):
    args = [*STUDY, "epochs=2", "hydra.sweeper.n_trials=3", "hydra.sweeper.confirm_seeds=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(KDRUN), *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sweep = tmp_path / "study"
    deadline = time.monotonic() + 300
    while not (sweep / "1" / "config.yaml").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the trial stays "running" in the database
    proc.wait()
    finished = {t.user_attrs["job"]: (sweep / str(t.user_attrs["job"]) / "metrics.json").stat().st_mtime_ns
                for t in trials(sweep) if t.state == optuna.trial.TrialState.COMPLETE}
    assert 0 in finished and len(finished) < 3

    def files():  # the study's files; the dead sweep's claim (.kdrun-sweep.lock) is the claim's own business
        return sorted((p.relative_to(sweep), p.stat().st_mtime_ns) for p in sweep.rglob("*")
                      if p.name != ".kdrun-sweep.lock")

    before = files()
    refused = run_kdrun(tmp_path, *args, check=False)  # without resume=: refused, nothing touched
    assert refused.returncode == 2 and "already holds a study's trials; add resume=auto" in refused.stderr
    assert files() == before

    proc = run_kdrun(tmp_path, *args, "resume=study")
    after = trials(sweep)
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert sorted(t.user_attrs["job"] for t in complete) == [0, 1, 2]  # one folder per trial, none added
    for job, mtime in finished.items():  # a finished trial's job was not run again
        assert (sweep / str(job) / "metrics.json").stat().st_mtime_ns == mtime
    interrupted = [t for t in after if t.state == optuna.trial.TrialState.FAIL]
    if interrupted:  # killed while its job ran: retried with the same parameters in the same folder
        (stale,) = interrupted
        retry = next(t for t in complete if t.user_attrs["job"] == stale.user_attrs["job"])
        assert retry.params == stale.params and retry.number > stale.number
        assert "interrupted one(s) retried" in proc.stderr


# the presets, made tiny: digits, one epoch, a 1-epoch teacher
TINY_PRESET = ["epochs=1", "teacher.epochs=1", "dataset.limit_train=256", "trainer.progress=false", "device=cpu",
               "hydra.sweep.dir=study"]


@pytest.mark.slow
def test_teacher_choice_trains_each_candidate_once(tmp_path):
    run_kdrun(tmp_path, "-m", "experiment=tune_teacher", "teacher=mlp,cnn_student", *TINY_PRESET,
              "hydra.sweeper.n_trials=3", "hydra.sweeper.confirm_seeds=0")
    sweep = tmp_path / "study"
    done = trials(sweep)
    assert len(done) == 3 and {t.params["teacher"] for t in done} <= {"mlp", "cnn_student"}
    for trial in done:  # each job distilled from the teacher its trial chose
        assert metrics(sweep / str(trial.user_attrs["job"]))["teacher_arch"] == trial.params["teacher"]
    cached = {p.parent.parent.name for p in (tmp_path / "outputs" / "teachers").glob("*/*/*/teacher.pt")}
    assert cached == {t.params["teacher"] for t in done}  # trained once each, then read from the cache
    assert len(list((tmp_path / "outputs" / "teachers").glob("*/*/*/teacher.pt"))) == len(cached)
    best = max(done, key=lambda t: t.value)
    assert f"override teacher: {best.params['teacher']}" in (sweep / "best.yaml").read_text()


@pytest.mark.slow
def test_pareto_preset_writes_its_front_with_distilled_and_scratch_students(tmp_path):
    run_kdrun(tmp_path, "-m", "experiment=tune_student_pareto", *TINY_PRESET, "hydra.sweeper.n_trials=3",
              "hydra.sweeper.confirm_seeds=1")
    sweep = tmp_path / "study"
    study = optuna.load_study(study_name="kdrun", storage=f"sqlite:///{sweep / 'study.db'}")
    for trial in study.trials:  # accuracy from the job, latency measured on its student at batch 1
        summary = metrics(sweep / str(trial.user_attrs["job"]))
        assert trial.values[0] == summary["final_val_acc"] and trial.values[1] > 0
        assert summary["arch"] == trial.params["student"]
    front = study.best_trials
    assert sorted(p.name for p in sweep.glob("pareto_*.yaml")) == sorted(
        f"pareto_{t.user_attrs['job']}.yaml" for t in front)
    assert (sweep / "pareto_front.png").is_file() and (sweep / "pareto_front.svg").is_file()
    assert not (sweep / "best.yaml").exists()
    table = (sweep / "study.md").read_text().split("## Pareto front", 1)[1].split("##", 1)[0]
    assert sorted(int(line.split("|")[1]) for line in table.splitlines() if line.startswith("| ") and
                  line.split("|")[1].strip().isdigit()) == sorted(t.number for t in front)
    confirmed = {p.name for p in (sweep / "confirm").iterdir() if p.is_dir()}
    for trial in front:  # each Pareto-optimal student, distilled and from scratch
        assert f"job{trial.user_attrs['job']}_kd_seed1" in confirmed
        arch = trial.params["student"]
        assert any(metrics(sweep / "confirm" / name)["arch"] == arch for name in confirmed if "scratch" in name)


def test_a_restart_retries_only_its_own_folders_trials(tmp_path):
    """On a shared study (hydra.sweeper.storage), a trial another worker is running is not 'interrupted'."""
    study = optuna.create_study()
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for folder, job in ((mine, 0), (theirs, 0), (mine, 1)):
        trial = study.ask(space)
        trial.set_user_attr("job", job)
        trial.set_user_attr(SWEEP, str(folder.absolute()))
    assert next_job_number(study, mine) == 2 and next_job_number(study, theirs) == 1
    assert retry_interrupted(study, mine) == 2
    states = [t.state for t in study.get_trials()]
    assert states[:3] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]
    queued = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert sorted(t.user_attrs["job"] for t in queued) == [0, 1]
