"""Experiment tracking with MLflow: the one module that calls MLflow (imported only when tracking is asked for).

The policy, in one place: a tracking server that can't be reached when a run starts fails it before any training
(TrackingError, exit 2, naming the URI); one that goes away later costs one warning per process and the rest of
that process's tracking, never the training: metrics.jsonl, the checkpoints and best/ are written whatever the
tracker does. Every call goes through MlflowClient with an explicit run id (no global active run), so Tune trials,
Ray workers and the driver can't log into each other's runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bertclf import storage
from bertclf.config import ReportConfig, TrainConfig, as_dict
from bertclf.errors import TrackingError
from bertclf.records import EpochRecord, TrackingRef

log = logging.getLogger("bertclf")

TRACKING_FILE = "tracking.json"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs (Tune trials) under
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch request
# MLflow retries a failed request 7 times with exponential backoff (minutes in all) by default: a server that has
# gone away should cost a training run seconds, once. Users can still set these variables themselves.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 # bertclf's stdout ends with one JSON line for schedulers; our log line names the run instead
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def check_uri(uri: str) -> None:
    """A tracking URI this MLflow client can use, checked before any work (TrackingError, exit 2): MLflow 3 refuses a
    file store (`file:///...`, `./mlruns`) unless MLFLOW_ALLOW_FILE_STORE is true, with an exception of its own
    that would otherwise end the run as a crash."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    if (scheme == "file" or scheme == "" or len(scheme) == 1) and \
            os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):  # "C:\\..." has scheme "c"
        raise TrackingError(
            f"tracking_uri {uri} is a file store (a directory of runs), which the MLflow client bertclf installs "
            "refuses (its file backend is in maintenance mode). Use a database, e.g. "
            "--tracking-uri sqlite:///$PWD/mlflow.db, or a server, e.g. --tracking-uri http://127.0.0.1:5000 "
            "(`mlflow server --backend-store-uri sqlite:///mlflow.db`); MLFLOW_ALLOW_FILE_STORE=true opts back in")


def _client(uri: str | None):
    """An MlflowClient for `uri` (None: MLFLOW_TRACKING_URI or MLflow's default) and the URI it resolved."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("tracking mlflow needs the MLflow client: pip install 'bertclf[tracking]' "
                            "(or set tracking none)") from None
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    resolved = uri or mlflow.get_tracking_uri()
    check_uri(resolved)
    return MlflowClient(tracking_uri=resolved), resolved


@dataclass
class Run:
    """An MLflow run this process logs to; after the first failed call it warns once and logs nothing more."""

    ref: TrackingRef
    client: Any = None
    lost: bool = False

    def _call(self, what: str, fn, *args, **kwargs) -> bool:
        if self.lost:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever the tracker does, training results are never lost to it
            self.lost = True
            log.warning("tracking: MLflow at %s stopped answering while logging %s (%s: %s); this process logs "
                        "nothing more to run %s, and training goes on: metrics.jsonl and the checkpoints are "
                        "complete on disk", self.ref.tracking_uri, what, type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "", self.ref.run_id)
            return False

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self._call("parameters", self.client.log_batch, self.ref.run_id, params=items[i:i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int, what: str = "metrics") -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()]
        self._call(what, self.client.log_batch, self.ref.run_id, metrics=items)

    def log_epoch(self, record: EpochRecord) -> None:
        """One epoch, from the record metrics.jsonl holds: its scalars, and each label's F1 as label/<name>/f1."""
        self.log_metrics(epoch_metrics(record), step=record.epoch, what=f"epoch {record.epoch}")

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        self._call(f"{artifact_path}/", self.client.log_artifacts, self.ref.run_id, str(local_dir), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(f"tag {k}", self.client.set_tag, self.ref.run_id, k, v)

    def finish(self, ok: bool) -> None:
        self._call("the run's end", self.client.set_terminated, self.ref.run_id, "FINISHED" if ok else "FAILED")


def attach(ref: TrackingRef) -> Run:
    """The run `ref` names, in this process (a rank-0 worker, `bertclf report`): no check, failures only warn
    (a worker node without the MLflow client too)."""
    try:
        client, _ = _client(ref.tracking_uri)
    except TrackingError as exc:
        log.warning("tracking: %s; this process logs nothing to run %s", exc, ref.run_id)
        return Run(ref=ref, lost=True)
    return Run(ref=ref, client=client)


def start(uri: str | None, experiment: str, run_name: str, tags: dict[str, str],
          parent: TrackingRef | None = None) -> Run:
    """A new run, checked now: a server that can't be reached (or refuses) raises TrackingError naming the URI.
    A child run (a Tune trial) goes into its parent's experiment and is tagged with its parent's id."""
    client, resolved = _client(uri)
    try:
        if parent is not None:
            experiment_id = parent.experiment_id
            tags = {**tags, PARENT_TAG: parent.run_id}
        else:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, HTTP errors: all mean "can't track"
        raise TrackingError(f"tracking: the MLflow tracking server at {resolved} can't be used ({type(exc).__name__}: "
                            f"{_first_line(exc)}); nothing was trained. Start it, fix tracking_uri, or set "
                            "tracking none") from None
    ref = TrackingRef(tracking_uri=resolved, experiment_id=str(experiment_id), run_id=run.info.run_id)
    log.info("tracking: MLflow run %s (%s) in experiment %s at %s", ref.run_id, run_name, experiment_id, resolved)
    return Run(ref=ref, client=client)


def start_training(cfg: TrainConfig, data, model_dir: str, parent: TrackingRef | None = None,
                   trial: str | None = None) -> Run | None:
    """The run of one training (None when tracking is none), its parameters logged and tracking.json written:
    the whole config, the model and the data fingerprint."""
    if cfg.tracking == "none":
        return None
    name = cfg.run_name or _output_name(cfg.output)
    if trial:
        name = trial
    tags = {"bertclf.command": "tune trial" if trial else "train", "bertclf.output": cfg.output,
            **_resumed_tag(cfg.output)}
    run = start(cfg.tracking_uri, cfg.experiment, name, tags, parent)
    run.log_params({**as_dict(cfg), **model_params(model_dir), **data_params(data)})
    write_ref(cfg.output, run.ref)
    return run


def start_search(base: TrainConfig, search: dict[str, Any]) -> Run | None:
    """The parent run of a Tune search: the base config and the search as parameters; trials are its children."""
    if base.tracking == "none":
        return None
    tags = {"bertclf.command": "tune", "bertclf.output": base.output, **_resumed_tag(base.output)}
    run = start(base.tracking_uri, base.experiment, base.run_name or _output_name(base.output), tags)
    run.log_params({**as_dict(base), **{f"search.{k}": v for k, v in search.items()}})
    write_ref(base.output, run.ref)
    return run


def for_report(cfg: ReportConfig, checkpoint_uri: str) -> Run | None:
    """The run a report logs to, checked now: the checkpoint's own run (its tracking.json) when its training was
    tracked; with tracking mlflow and an untracked checkpoint, a new run; None when there is nothing to log to."""
    if cfg.tracking == "none":
        return None
    ref = read_ref(checkpoint_uri)
    if ref is None:
        if cfg.tracking == "auto":
            return None
        return start(cfg.tracking_uri, cfg.experiment, cfg.run_name or "report",
                     {"bertclf.command": "report", "bertclf.model.checkpoint": checkpoint_uri})
    if cfg.tracking_uri:
        ref = replace(ref, tracking_uri=cfg.tracking_uri)
    check_uri(ref.tracking_uri)
    run = attach(ref)
    try:
        run.client.get_run(ref.run_id)
    except Exception as exc:  # noqa: BLE001 - as start(): any failure here means the run can't be logged to
        raise TrackingError(f"tracking: the checkpoint {checkpoint_uri} was tracked in MLflow run {ref.run_id} at "
                            f"{ref.tracking_uri}, which can't be used ({type(exc).__name__}: {_first_line(exc)}); "
                            "nothing was scored. Start the server, give tracking_uri, or set tracking none") from None
    log.info("tracking: the report goes to MLflow run %s at %s", ref.run_id, ref.tracking_uri)
    return run


def log_report(run: Run, report_dir: Path, headline: dict[str, Any]) -> None:
    """report.json, index.html and figures/ as the run's report/ artifacts; the headline numbers as report.* metrics."""
    numbers = {f"report.{k}": float(v) for k, v in headline.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    if numbers:
        run.log_metrics(numbers, step=0, what="the report's metrics")
    run.log_artifacts(report_dir, "report")


def model_params(model_dir: str) -> dict[str, Any]:
    """What the model is, from its config.json: type, size, vocabulary."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {"model.dir": model_dir}
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "max_position_embeddings")
    return {"model.dir": model_dir, **{f"model.{k}": config[k] for k in keys if k in config}}


def data_params(data) -> dict[str, Any]:
    """The training data's fingerprint, files, row and label counts (as bertclf.json's data record holds them)."""
    summary = data.summary().to_dict()
    summary.pop("format", None)
    return {"data.task": data.space.task, "data.labels": data.space.names,
            **{f"data.{k}": v for k, v in summary.items()}}


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """The epoch's numbers as MLflow metrics: every scalar of the record (the epoch is the step), per-label F1."""
    metrics = {k: v for k, v in record.scalars().items() if k != "epoch" and math.isfinite(v)}
    for name, scores in (record.per_label or {}).items():
        if isinstance(scores, dict) and isinstance(scores.get("f1"), int | float):
            metrics[f"label/{name}/f1"] = float(scores["f1"])
    return metrics


def write_ref(directory_uri: str, ref: TrackingRef) -> None:
    storage.write_bytes(storage.join(directory_uri, TRACKING_FILE), ref.to_json(indent=2).encode())


def read_ref(directory_uri: str) -> TrackingRef | None:
    """The run recorded in a directory's tracking.json (a run directory or a checkpoint), None when untracked."""
    uri = storage.join(directory_uri, TRACKING_FILE)
    if not storage.exists(uri):
        return None
    return TrackingRef.from_json(storage.read_bytes(uri))


def _resumed_tag(output: str) -> dict[str, str]:
    """A second command on the same output starts a new run; it names the run the output had before."""
    try:
        previous = read_ref(output)
    except Exception:  # noqa: BLE001 - an unreadable old tracking.json only loses this tag
        previous = None
    return {"bertclf.previous_run": previous.run_id} if previous else {}


def _output_name(output: str) -> str:
    return output.rstrip("/").rsplit("/", 1)[-1] or "bertclf"


def _key(name: str) -> str:
    """MLflow keys take letters, digits, _ - . space / only; a label name may hold anything."""
    return re.sub(r"[^\w\-. /]", "_", str(name))[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
