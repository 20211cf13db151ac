"""logger=mlflow and logger=wandb end to end: parameters, per-epoch metrics and artifacts, read back
with each tracker's own files or client. Offline: MLflow's local file store, W&B's offline mode."""

from __future__ import annotations

import json
import os

import pytest

from conftest import TINY, only_run_dir, read_jsonl, run_kdrun
from kdrun.track.trackers import flatten

RUN = [*TINY, "epochs=2", "device=cpu"]


def test_flatten_gives_dotted_string_parameters():
    assert flatten({"loss": {"T": 4.0, "alpha": 0.1}, "seed": 0, "x": [1, 2]}) == {
        "loss.T": "4.0", "loss.alpha": "0.1", "seed": "0", "x": "[1, 2]"}


@pytest.mark.slow  # two kdrun runs of a few seconds each, plus MLflow's import
def test_mlflow_run_is_read_back_with_mlflows_client(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    run_kdrun(tmp_path, *RUN, "logger=mlflow", "T=3.5")
    run_dir = only_run_dir(tmp_path)
    records = read_jsonl(run_dir / "metrics.jsonl")

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "outputs" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("kdrun")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["loss.terms.kd.T"] == "3.5" and run.data.params["student.arch"] == "cnn_student"
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["test_acc"]) for r in records]
    assert set(run.data.metrics) >= {"loss", "loss_ce", "loss_kd", "train_acc", "test_acc", "lr"}
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert checkpoints == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert {"report/config.yaml", "report/metrics.json", "report/metrics.jsonl", "report/learning_curves.png"} <= report
    local = client.download_artifacts(run.info.run_id, "report/metrics.json", str(tmp_path / "back"))
    assert json.loads(open(local).read()) == json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow  # wandb starts a service process
def test_wandb_is_offline_without_a_login_and_keeps_config_metrics_and_artifacts(tmp_path):
    pytest.importorskip("wandb")
    env_home = tmp_path / "home"
    env_home.mkdir()
    os.environ.pop("WANDB_API_KEY", None)
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(env_home)  # no ~/.netrc: not logged in
    try:
        run_kdrun(tmp_path, *RUN, "logger=wandb", "T=3.5")
    finally:
        os.environ["HOME"] = old_home or ""
    run_dir = only_run_dir(tmp_path)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    # The offline log holds protobuf records that `wandb sync` uploads; this wandb has no Python reader
    # for it, so look for what each record must carry: every epoch's values, the config, the artifacts.
    (log,) = offline.glob("run-*.wandb")
    data = log.read_bytes()
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        for key in ("test_acc", "loss_kd"):
            assert key.encode() in data and json.dumps(record[key]).encode() in data
    assert b"3.5" in data and b"cnn_student" in data
    for name in (b"last.pt", b"best.pt", b"metrics.json", b"learning_curves.png"):
        assert name in data
