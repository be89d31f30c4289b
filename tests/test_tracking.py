"""Experiment tracking against a real MLflow tracking server (`mlflow server`, SQLite backend store, proxied
artifacts) started on 127.0.0.1 by the tests and read back through MlflowClient: a tracked training run and the
report logged to the same run, a server that is down at the start (exit 2, nothing trained), a server that goes
away mid-run (a warning, training completes), and a Tune search as a parent run with one child per trial."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from faults import FaultProxy
from mlflow.tracking import MlflowClient  # bertclf[tracking-server]: cluster/install.sh installs it

from bertclf import cli
from bertclf.config import ReportConfig, TrainConfig
from bertclf.dev.ports import free_port
from bertclf.dev.servers import start_mlflow, stop_group, wait_healthy
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]

SERVER_START_S = 240  # ~50 s on this 2-core machine under load: the server imports a lot before it listens


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite backend store and artifacts served through it (the client uploads over HTTP,
    as against a remote server); stopped by its process group at the end."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow(root, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, proc, root / "server.log", SERVER_START_S)
        yield uri
    finally:
        stop_group(proc)


def _data(tmp_path: Path) -> dict:
    write_rows(tmp_path / "train.parquet", make_rows(200, seed=21, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(60, seed=22, multi_label=True))
    return dict(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"))


def _config(tmp_path: Path, tiny_model: Path, **kw) -> TrainConfig:
    base = dict(**_data(tmp_path), output=str(tmp_path / "run"), model=str(tiny_model), epochs=2, num_workers=2,
                batch_size=16, learning_rate=2e-3, warmup_ratio=0.0, max_length=32, precision="fp32",
                tracking="mlflow", experiment="bertclf-tests")
    base.update(kw)
    return TrainConfig(**base)


def _metrics_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _artifacts(client: MlflowClient, run_id: str, path: str) -> set[str]:
    """Every file under `path` in the run's artifacts, recursively."""
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_tracked_run_lands_in_mlflow_params_every_epoch_and_the_checkpoint(ray_local, tiny_model, mlflow_server,
                                                                             tmp_path):
    from bertclf.training import run

    cfg = _config(tmp_path, tiny_model, tracking_uri=mlflow_server, run_name="tiny-tracked")
    result = run(cfg)
    output = Path(cfg.output)
    ref = json.loads((output / "tracking.json").read_text())
    assert json.loads((output / "best" / "tracking.json").read_text()) == ref, "the checkpoint names its run"
    assert ref["tracking_uri"] == mlflow_server

    client = MlflowClient(mlflow_server)
    tracked = client.get_run(ref["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "tiny-tracked"
    assert client.get_experiment(tracked.info.experiment_id).name == "bertclf-tests"
    params = tracked.data.params
    meta = json.loads((output / "best" / "bertclf.json").read_text())
    assert params["learning_rate"] == "0.002" and params["epochs"] == "2" and params["tracking"] == "mlflow"
    assert params["max_length"] == "32" and params["output"] == str(output)
    assert params["model.model_type"] == "bert" and params["model.num_hidden_layers"] == "2"
    assert params["data.fingerprint"] == meta["data"]["fingerprint"] and params["data.n_train"] == "200"
    assert json.loads(params["data.labels"]) == ["anger", "fear", "joy"]

    lines = _metrics_lines(output)
    for key in ("train_loss", "val_loss", "f1_macro", "f1_micro", "roc_auc_macro", "samples_per_s",
                "f1_macro_at_0.5"):
        history = sorted(client.get_metric_history(ref["run_id"], key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(line["epoch"], pytest.approx(line[key])) for line in lines]
    joy = client.get_metric_history(ref["run_id"], "label/joy/f1")
    assert [m.value for m in sorted(joy, key=lambda m: m.step)] == [pytest.approx(x["per_label"]["joy"]["f1"])
                                                                   for x in lines]
    published = {p.name for p in (output / "best").iterdir()}
    assert _artifacts(client, ref["run_id"], "checkpoint") == {f"checkpoint/{n}" for n in published}
    assert {"model.safetensors", "bertclf.json", "config.json", "tracking.json"} <= published
    assert tracked.data.tags["bertclf.best_epoch"] == str(result.best.epoch)


def _tracked_checkpoint(tmp_path: Path, tiny_model: Path, uri: str, client: MlflowClient) -> tuple[Path, str]:
    """A checkpoint as a tracked training publishes it: best/ with the tracking.json of its (existing) run."""
    from bertclf.records import TrackingRef

    experiment_id = client.create_experiment(f"report-{tmp_path.name}")
    run_id = client.create_run(experiment_id, run_name="trained").info.run_id
    client.set_terminated(run_id)
    best = save_tiny_checkpoint(tmp_path / "run" / "best", tiny_model, "multi_label", [0.5, 0.5, 0.5])
    (best / "tracking.json").write_text(TrackingRef(uri, experiment_id, run_id).to_json())
    return best, run_id


def test_report_of_a_tracked_checkpoint_logs_its_page_and_numbers_to_the_checkpoints_run(ray_local, tiny_model,
                                                                                        mlflow_server, tmp_path):
    from bertclf.report import evaluation_report

    client = MlflowClient(mlflow_server)
    best, run_id = _tracked_checkpoint(tmp_path, tiny_model, mlflow_server, client)
    ref = {"run_id": run_id}
    data = _data(tmp_path)["validation"]
    report_dir = tmp_path / "report"  # tracking auto: the checkpoint's run
    report = evaluation_report(ReportConfig(checkpoint=str(best), data=data, output=str(report_dir)))
    logged = _artifacts(client, ref["run_id"], "report")
    figures = {f"report/figures/{p.name}" for p in (report_dir / "figures").iterdir()}
    assert figures and figures | {"report/report.json", "report/index.html"} == logged
    local = client.download_artifacts(ref["run_id"], "report/report.json", str(tmp_path / "downloaded"))
    assert json.loads(Path(local).read_text()) == json.loads((report_dir / "report.json").read_text())
    assert client.get_run(ref["run_id"]).data.metrics["report.f1_macro"] == pytest.approx(
        report["headline"]["f1_macro"])
    assert client.get_run(run_id).info.status == "FINISHED", "logging to a finished run leaves it finished"


def test_report_tracking_auto_none_mlflow_and_a_server_gone_since_training(tiny_model, mlflow_server, tmp_path):
    """Which run a report logs to is settled before any scoring; a tracked checkpoint whose server is gone is exit
    2 naming the recorded URI (tracking none reports without it)."""
    from bertclf import tracking
    from bertclf.errors import TrackingError
    from bertclf.records import TrackingRef

    client = MlflowClient(mlflow_server)
    untracked = save_tiny_checkpoint(tmp_path / "plain", tiny_model, "multi_class")
    assert tracking.for_report(ReportConfig(tracking="auto"), str(untracked)) is None
    fresh = tracking.for_report(ReportConfig(tracking="mlflow", tracking_uri=mlflow_server,
                                             experiment="reports-of-untracked"), str(untracked))
    assert client.get_run(fresh.ref.run_id).info.run_name == "report"
    assert client.get_experiment(fresh.ref.experiment_id).name == "reports-of-untracked"

    best, run_id = _tracked_checkpoint(tmp_path, tiny_model, mlflow_server, client)
    assert tracking.for_report(ReportConfig(tracking="none"), str(best)) is None
    assert tracking.for_report(ReportConfig(), str(best)).ref.run_id == run_id
    gone = f"http://127.0.0.1:{free_port()}"
    (best / "tracking.json").write_text(TrackingRef(gone, "1", run_id).to_json())
    with pytest.raises(TrackingError, match=f"tracked in MLflow run {run_id} at {gone}, which can't be used"):
        tracking.for_report(ReportConfig(), str(best))
    moved = tracking.for_report(ReportConfig(tracking_uri=mlflow_server), str(best))
    assert moved.ref.tracking_uri == mlflow_server and moved.ref.run_id == run_id


def test_a_server_that_is_down_fails_the_run_before_training_with_exit_2(tiny_model, tmp_path, capsys):
    """Nothing listens on the port: exit 2 and a message naming the URI, in seconds; no Ray run, no metrics."""
    down = f"http://127.0.0.1:{free_port()}"
    data = _data(tmp_path)
    started = time.monotonic()
    code = cli.main(["train", "--train", data["train"], "--validation", data["validation"], "--output",
                     str(tmp_path / "run"), "--model", str(tiny_model), "--max-length", "32", "--epochs", "1",
                     "--tracking", "mlflow", "--tracking-uri", down])
    assert code == 2
    err = capsys.readouterr().err
    assert f"MLflow tracking server at {down} can't be used" in err and "nothing was trained" in err, err
    assert time.monotonic() - started < 30, "bounded retries: a dead tracker costs seconds, not minutes"
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "ray_train").exists()


@pytest.mark.parametrize("uri", ["file:///tmp/bertclf-mlruns", "./mlruns"])
def test_a_file_store_uri_is_refused_before_ray_with_exit_2_naming_the_fix(uri, tiny_model, tmp_path, capsys,
                                                                           monkeypatch):
    """MLflow 3 refuses file stores with an exception of its own: bertclf refuses the URI first (exit 2, the URI and
    the fix named), before Ray starts and before MLflow writes anything; MLFLOW_ALLOW_FILE_STORE=true opts back in."""
    from bertclf import tracking
    from bertclf.errors import TrackingError
    from bertclf.training import driver

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(driver, "connect", lambda *a, **k: pytest.fail("Ray was started for a file-store URI"))
    data = _data(tmp_path)
    code = cli.main(["train", "--train", data["train"], "--validation", data["validation"], "--output",
                     str(tmp_path / "run"), "--model", str(tiny_model), "--epochs", "1",
                     "--set", "tracking=mlflow", "--set", f"tracking_uri={uri}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"tracking_uri {uri} is a file store" in err and "sqlite:///" in err and "http://" in err, err
    assert "Traceback" not in err and not (tmp_path / "mlruns").exists()
    with pytest.raises(TrackingError, match="file store"):
        tracking.for_report(ReportConfig(tracking="mlflow", tracking_uri=uri), str(tmp_path / "no-checkpoint"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking.check_uri(uri)
    tracking.check_uri("sqlite:///mlflow.db")
    tracking.check_uri("http://127.0.0.1:5000")


@pytest.mark.slow  # three epochs through a proxy (~50 s on 2 cores); a server down at the start runs by default
def test_a_server_that_goes_away_mid_run_costs_a_warning_and_training_completes(ray_local, tiny_model,
                                                                                mlflow_server, tmp_path, caplog):
    """The run starts through a proxy; once epoch 1 is in MLflow the proxy goes away. Every epoch still lands in
    metrics.jsonl and best/ is published; MLflow keeps what it got (the run is left RUNNING: its end never
    arrived)."""
    from bertclf.training import run

    proxy = FaultProxy(int(mlflow_server.rsplit(":", 1)[1]))  # closed: the server gone, as every client sees it
    cfg = _config(tmp_path, tiny_model, tracking_uri=f"http://127.0.0.1:{proxy.port}", epochs=3)
    direct = MlflowClient(mlflow_server)
    stopped_after: list[int] = []

    def stop_after_first_epoch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ref_file = Path(cfg.output) / "tracking.json"
            if ref_file.exists():
                run_id = json.loads(ref_file.read_text())["run_id"]
                seen = direct.get_metric_history(run_id, "f1_macro")
                if seen:
                    proxy.close()
                    stopped_after.append(len(seen))
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=stop_after_first_epoch, daemon=True)
    watcher.start()
    with caplog.at_level(logging.WARNING, logger="bertclf"):
        result = run(cfg)  # in this (main) thread: Ray Train wants it
    watcher.join(timeout=5)

    assert stopped_after, "the proxy was never stopped"
    assert result.epochs_run == 3 and [x["epoch"] for x in _metrics_lines(Path(cfg.output))] == [1, 2, 3]
    assert (Path(cfg.output) / "best" / "bertclf.json").is_file()
    warnings = [r.getMessage() for r in caplog.records if "stopped answering" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the driver's one warning (rank 0 warns once in its own log)
    assert "training goes on" in warnings[0] and str(proxy.port) in warnings[0]
    run_id = json.loads((Path(cfg.output) / "tracking.json").read_text())["run_id"]
    kept = direct.get_run(run_id)
    assert kept.info.status == "RUNNING"
    assert len(direct.get_metric_history(run_id, "f1_macro")) < 3
    assert not _artifacts(direct, run_id, "checkpoint"), "the checkpoint upload came after the server went away"


@pytest.mark.slow
def test_tune_logs_a_parent_run_with_one_child_per_trial(tiny_model, mlflow_server, tmp_path):
    """`bertclf tune` in a subprocess with its own Ray, as users run it (two one-epoch trials: 342 s on 2 loaded
    cores)."""
    output = tmp_path / "search"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        **_data(tmp_path), "model": str(tiny_model), "output": str(output), "epochs": 1, "num_workers": 2,
        "batch_size": 16, "max_length": 32, "precision": "fp32", "warmup_ratio": 0.0, "tracking": "mlflow",
        "tracking_uri": mlflow_server, "experiment": "bertclf-tune-tests", "run_name": "search"}))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({
        "num_samples": 2, "scheduler": "fifo", "seed": 1, "space": {"learning_rate": {"choice": [1e-3, 3e-3]}}}))
    done = subprocess.run([sys.executable, "-m", "bertclf.cli", "tune", "--config", str(tmp_path / "base.yaml"),
                           "--search", str(tmp_path / "search.yaml")], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    parent_id = json.loads((output / "tracking.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "search"
    assert json.loads(parent.data.params["search.space"]) == {"learning_rate": {"choice": [0.001, 0.003]}}
    assert _artifacts(client, parent_id, "trials") == {"trials/trials.csv", "trials/trials.json"}
    table = json.loads((output / "trials.json").read_text())
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(t["trial_id"] for t in table)
    for child in children:
        trial = next(t for t in table if t["trial_id"] == child.info.run_name)
        assert child.info.status == "FINISHED"
        assert float(child.data.params["learning_rate"]) == trial["values"]["learning_rate"]
        assert child.data.metrics["f1_macro"] == pytest.approx(trial["best"])
        assert "checkpoint/model.safetensors" in _artifacts(client, child.info.run_id, "checkpoint")
    best = max(table, key=lambda t: t["best"])
    assert parent.data.tags["bertclf.best_trial"] == best["trial_id"]
    assert json.loads((output / "best" / "tracking.json").read_text())["run_id"] in {c.info.run_id for c in children}


def test_bertclf_runs_without_mlflow_until_tracking_is_asked_for(tmp_path):
    """With MLflow unimportable: the package, the CLI and a tracking-none run's setup work; tracking mlflow is a clear
    exit-2 error naming the extra."""
    script = """
import sys
class NoMlflow:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("no mlflow here")
sys.meta_path.insert(0, NoMlflow())
import bertclf, bertclf.cli, bertclf.training, bertclf.tuning, bertclf.report, bertclf.tracking
from bertclf.config import TrainConfig
from bertclf.errors import TrackingError
assert bertclf.tracking.start_training(TrainConfig(), None, "") is None
try:
    bertclf.tracking.start_training(TrainConfig(tracking="mlflow"), None, "")
except TrackingError as exc:
    print(exc)
assert "mlflow" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pip install 'bertclf[tracking]'" in done.stdout


def test_epoch_metrics_and_params_fit_mlflow():
    """Every number of the record, the epoch as the step, per-label F1 under keys MLflow takes; long values cut."""
    from bertclf.records import EpochRecord
    from bertclf.tracking import _key, _param_value, epoch_metrics

    record = EpochRecord(epoch=2, train_loss=0.5, val_loss=0.4, f1_micro=0.6, f1_macro=0.55, f1_weighted=0.6,
                         roc_auc_macro=None, train_seconds=1.0, samples_per_s=10.0, tokens_per_s=100.0, workers=2,
                         first_batch_seconds=0.1, data_wait_seconds=0.2, validation_rows=40,
                         per_label={"joy": {"f1": 0.7, "support": 3}, "a:b?": {"f1": 0.1, "support": 1}})
    metrics = epoch_metrics(record)
    assert "epoch" not in metrics and "roc_auc_macro" not in metrics and metrics["f1_macro"] == 0.55
    assert metrics["label/joy/f1"] == 0.7 and _key("label/a:b?/f1") == "label/a_b_/f1"
    assert _param_value(["a", 1]) == '["a", 1]' and _param_value("x") == "x" and _param_value(None) == "null"
    assert len(_param_value("y" * 7000)) == 6000
