"""`bertclf tune`: a Ray Tune search whose trials are whole Ray Train runs, then the best one published.

Each trial is `bertclf.training.run` on the base config plus the trial's values, in `<output>/trials/<id>/`, with
Tune's report callback forwarding every epoch's validation metrics (what ASHA stops weak trials on). Trials
share the cluster: each gets an equal share planned up front, so concurrent trials never wait on each other's
CPUs (the same trap as 2 workers x 1 CPU on 2 cores). The experiment's state lives in `<output>/tune/`; running
the same command again after the driver died resumes it. At the end: `<output>/trials.csv` and `trials.json`
(one row per trial) and the best trial's best checkpoint at `<output>/best/`, as `bertclf train` publishes it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertclf import logs, storage, tracking
from bertclf.config import TrainConfig
from bertclf.errors import ConfigError
from bertclf.model import checkpoint
from bertclf.records import TrackingRef
from bertclf.resources import TrainPlan, connect, plan_training
from bertclf.training.driver import prepare
from bertclf.tuning.space import SearchSpec, check_space, max_epochs, param_space, trial_config, trial_count

log = logging.getLogger(__name__)

EXPERIMENT = "tune"
TRIAL_DRIVER_CPUS = 0.05  # the Tune trial itself only waits on its Ray Train run (Tune refuses 0)


@dataclass
class TrialRow:
    """One line of the results table."""

    trial_id: str
    status: str  # completed, stopped early (by the scheduler), error: ...
    values: dict[str, Any]
    metric: str
    best: float | None
    best_epoch: int | None
    epochs_run: int
    seconds: float
    output: str
    kept_checkpoint: str | None = None  # the best epoch's Ray Train checkpoint, for a trial stopped early


@dataclass
class TuneResult:
    best_uri: str
    best: TrialRow
    trials: list[TrialRow]
    table_uri: str


def run(base: TrainConfig, spec: SearchSpec) -> TuneResult:
    """Check the base config and the search, run (or resume) the search, write the table, publish the best."""
    spec.validate()
    base = dataclasses.replace(base, best_metric=spec.metric or base.best_metric,
                               best_mode=spec.mode or base.best_mode)
    check_space(spec, base)
    base, _ = prepare(base)  # data, model, metric and method checked once, before any trial
    # before Ray: an unreachable tracking server fails the search here (exit 2); trials become its child runs
    parent = tracking.start_search(base, dataclasses.asdict(spec))
    ok = False
    try:
        result = _search(base, spec, parent.ref if parent else None)
        if parent:
            parent.log_metrics({f"best.{result.best.metric}": result.best.best}, step=result.best.best_epoch or 0)
            parent.set_tags({"bertclf.best_trial": result.best.trial_id, "bertclf.best_uri": result.best_uri})
            with tempfile.TemporaryDirectory() as tmp:
                parent.log_artifacts(_copy_table(base.output, Path(tmp)), "trials")
        ok = True
        return result
    finally:
        if parent:
            parent.finish(ok)


def _search(base: TrainConfig, spec: SearchSpec, parent: TrackingRef | None) -> TuneResult:
    cluster = connect(base.ray_address)
    concurrent, plan = plan_trials(cluster, base, spec.max_concurrent_trials)
    base = dataclasses.replace(base, cpus_per_worker=plan.cpus_per_worker, use_gpu=plan.use_gpu)
    log.info("tune: %d trial(s), %d at a time, each %s", trial_count(spec), concurrent, plan.describe())
    grid = _tuner(base, spec, concurrent, parent).fit()
    rows = trial_rows(grid, base, spec)
    table_uri = _write_table(base.output, rows)
    finished = [r for r in rows if r.best is not None]
    if not finished:
        errors = "; ".join(f"{r.trial_id}: {r.status}" for r in rows) or "no trial ran"
        raise RuntimeError(f"no trial reported a validation {base.best_metric}: {errors}")
    best = sorted(finished, key=lambda r: r.best, reverse=base.best_mode == "max")[0]
    best_uri = _publish(base, best)
    log.info("tune: best trial %s (%s=%.4f at epoch %s, %s) committed to %s", best.trial_id, best.metric,
             best.best, best.best_epoch, best.values, best_uri)
    return TuneResult(best_uri=best_uri, best=best, trials=rows, table_uri=table_uri)


def _copy_table(output: str, local: Path) -> Path:
    """trials.csv and trials.json copied into `local` (the parent run's trials/ artifacts; the output may be s3://)."""
    for name in ("trials.csv", "trials.json"):
        (local / name).write_bytes(storage.read_bytes(storage.join(output, name)))
    return local


def plan_trials(cluster: dict[str, float], base: TrainConfig,
                max_concurrent: int | None) -> tuple[int, TrainPlan]:
    """How many trials run at once and the plan of each: an equal share of the cluster per trial.

    Default: one trial per `num_workers` GPUs on GPU clusters; on CPUs, one per 2 CPUs per worker (fewer,
    larger trials train faster than many starved ones), at least one."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    gpu = gpus >= 1 if base.use_gpu is None else base.use_gpu
    if max_concurrent is None:
        max_concurrent = int(gpus // base.num_workers) if gpu else int(cpus // (2 * base.num_workers))
    concurrent = max(1, max_concurrent)
    share = {"CPU": cpus / concurrent - TRIAL_DRIVER_CPUS, "GPU": math.floor(gpus / concurrent)}
    try:
        plan = plan_training(share, base.num_workers, gpu, base.cpus_per_worker)
    except ConfigError as exc:
        raise ConfigError(f"{concurrent} concurrent trial(s) on a cluster with {cpus:g} CPU(s), {gpus:g} GPU(s): "
                          f"{exc}; lower max_concurrent_trials") from None
    return concurrent, plan


def run_trial(values: dict[str, Any], base: TrainConfig, parent: TrackingRef | None = None) -> None:
    """One trial, in its Tune actor: a whole training run that reports each epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from bertclf import training

    trial_id = tune.get_context().get_trial_id()
    logs.setup(tag=f"trial {trial_id}")  # this actor's lines say which trial they belong to
    cfg = trial_config(base, values, storage.join(base.output, "trials", trial_id))
    finished = _finished_history(cfg)
    if finished:  # the driver died after this trial published its best, before Tune recorded that: report again
        log.info("trial %s finished before the search was interrupted: reporting its %d epoch(s) again",
                 trial_id, len(finished))
        for record in finished:
            tune.report(record.scalars())
        return
    training.run(cfg, callbacks=[TuneReportCallback()], parent=parent, trial=trial_id)


def _finished_history(cfg: TrainConfig) -> list:
    """The epochs of a trial whose training already ran to the end and published its best, else []."""
    best = storage.join(cfg.output, "best")
    if not storage.exists(storage.join(best, checkpoint.MARKER)):
        return []
    history = checkpoint.read_metrics(storage.join(cfg.output, "metrics.jsonl"))
    return history if len(history) >= cfg.epochs else []


def _tuner(base: TrainConfig, spec: SearchSpec, concurrent: int, parent: TrackingRef | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, parent=parent),
                                    {"CPU": TRIAL_DRIVER_CPUS})
    fs, root = storage.resolve(base.output)
    experiment = f"{root.rstrip('/')}/{EXPERIMENT}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("tune: resuming the search in %s (its search space and budget are the ones it started with)",
                 storage.join(base.output, EXPERIMENT))
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs)
    # stop_last_trials=False: a trial that reaches max_t ends on its own, after publishing its best (stopping it
    # there killed it between its last report and the publish)
    scheduler = (ASHAScheduler(max_t=max_epochs(spec, base), grace_period=spec.grace_period,
                               reduction_factor=spec.reduction_factor, stop_last_trials=False)
                 if spec.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=base.best_metric, mode=base.best_mode, num_samples=spec.num_samples,
                                    time_budget_s=spec.time_budget_s, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=spec.seed,
                                                                     max_concurrent=concurrent)),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=root, storage_filesystem=fs, verbose=1),
    )


def trial_rows(grid, base: TrainConfig, spec: SearchSpec) -> list[TrialRow]:
    """The results table from Tune's results: each trial's values, best epoch, epochs run, time and fate."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    fs, _ = storage.resolve(base.output)
    rows = []
    for result in grid:
        values = {k: result.config[k] for k in spec.space if k in (result.config or {})}
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_dir(result.path)
        frame = result.metrics_dataframe
        reported = frame is not None and base.best_metric in frame and frame[base.best_metric].notna().any()
        best = best_epoch = kept = None
        epochs_run = 0
        if reported:
            scores = frame[base.best_metric]
            at = scores.idxmax() if base.best_mode == "max" else scores.idxmin()
            best, best_epoch, epochs_run = float(scores[at]), int(frame["epoch"][at]), int(frame["epoch"].max())
            path = frame[CHECKPOINT_PATH_KEY][at] if CHECKPOINT_PATH_KEY in frame else None
            kept = storage.to_uri(fs, str(path)) if isinstance(path, str) else None
        planned = int(values.get("epochs", base.epochs))
        status = (f"error: {type(result.error).__name__}: {str(result.error).splitlines()[0][:200]}" if result.error
                  else "completed" if epochs_run >= planned else "stopped early")
        rows.append(TrialRow(trial_id=str(trial_id), status=status, values=values, metric=base.best_metric,
                             best=best, best_epoch=best_epoch, epochs_run=epochs_run,
                             seconds=round(float((result.metrics or {}).get("time_total_s", 0.0)), 1),
                             output=storage.join(base.output, "trials", str(trial_id)), kept_checkpoint=kept))
    return sorted(rows, key=lambda r: (r.best is None, -(r.best or 0) if base.best_mode == "max" else (r.best or 0)))


def _trial_id_from_dir(path: str) -> str:
    """A trial that never reported: its id from Tune's directory name (`<trainable>_<xxxxx>_<nnnnn>_...`)."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", Path(path).name)
    return found.group(1) if found else Path(path).name


def _write_table(output: str, rows: list[TrialRow]) -> str:
    """trials.json and trials.csv under the output, and the table in the log."""
    storage.write_bytes(storage.join(output, "trials.json"),
                        json.dumps([dataclasses.asdict(r) for r in rows], indent=2).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial_id", "status", "values", "metric", "best", "best_epoch", "epochs_run", "seconds"])
    for r in rows:
        writer.writerow([r.trial_id, r.status, json.dumps(r.values, sort_keys=True), r.metric,
                         "" if r.best is None else f"{r.best:.4f}", r.best_epoch or "", r.epochs_run, r.seconds])
    table_uri = storage.join(output, "trials.csv")
    storage.write_bytes(table_uri, buffer.getvalue().encode())
    for line in buffer.getvalue().splitlines():
        log.info("tune: %s", line)
    return table_uri


def _publish(base: TrainConfig, best: TrialRow) -> str:
    """The best trial's best checkpoint at <output>/best/: its own best/ when it finished, else (stopped early)
    the best checkpoint its Ray Train run kept."""
    source = storage.join(best.output, "best")
    if not storage.exists(storage.join(source, checkpoint.MARKER)):
        if best.kept_checkpoint is None:
            raise RuntimeError(f"trial {best.trial_id} published no best/ and kept no checkpoint of its best epoch "
                               f"{best.best_epoch}")
        source = best.kept_checkpoint
    best_uri = storage.join(base.output, "best")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "ckpt"
        shutil.copytree(storage.local_copy(source, checkpoint.MARKER), local)
        checkpoint.strip_training_state(local)
        checkpoint.publish(local, best_uri)
    return best_uri
