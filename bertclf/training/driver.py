"""Data-parallel fine-tuning with Ray Train: validate on the driver, train on N workers, publish the best.

`run(TrainConfig)` (bertclf.training.run) is what `bertclf train` and `jobs/train.py` call. The run directory
is the output URI: Ray Train's checkpoints live under `<output>/ray_train/`, per-epoch metrics in
`<output>/metrics.jsonl`, and the best checkpoint is committed to `<output>/best/` when training ends.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertclf import storage, tracking
from bertclf.baseline import Baseline
from bertclf.config import TrainConfig
from bertclf.errors import ConfigError
from bertclf.model import checkpoint
from bertclf.model.modeling import load_tokenizer, resolve_model_dir
from bertclf.records import EpochRecord, TrackingRef
from bertclf.resources import TrainPlan, connect, plan_training
from bertclf.training.classical import fit_on_cluster
from bertclf.training.data import TrainingData, class_prior_bias, inspect_training_data, train_dataset
from bertclf.training.lengths import (
    CHUNK_WHEN_LONGER,
    LENGTH_QUANTILE,
    auto_long_text,
    auto_max_length,
    check_max_length,
    model_length_limit,
    token_counts,
)
from bertclf.training.worker import METRICS_FILE, train_loop_per_worker

log = logging.getLogger(__name__)

RAY_RUN_NAME = "ray_train"


@dataclass
class TrainResult:
    best_uri: str
    best: EpochRecord  # the epoch of the published checkpoint
    epochs_run: int
    history: list[EpochRecord]


def run(cfg: TrainConfig, callbacks: list | None = None, parent: TrackingRef | None = None,
        trial: str | None = None) -> TrainResult:
    """Validate everything, train with Ray Train, and commit the best checkpoint to <output>/best/.

    `callbacks` go to Ray Train's RunConfig (`bertclf tune` passes Tune's report callback); `parent` and `trial`
    make the MLflow run a Tune trial's child run."""
    cfg, data = prepare(cfg)
    # after the cheap checks, before Ray: an unreachable tracking server fails the run here (exit 2)
    tracked = (tracking.start_training(cfg, data, resolve_model_dir(cfg.model), parent, trial)
               if cfg.tracking != "none" else None)
    ok = False
    try:
        cluster = connect(cfg.ray_address)
        plan = plan_training(cluster, cfg.num_workers, cfg.use_gpu, cfg.cpus_per_worker)
        log.info("resources: cluster has %s; plan: %s", {k: v for k, v in cluster.items() if k in ("CPU", "GPU")},
                 plan.describe())
        plan = dataclasses.replace(plan, max_tokens_per_batch=_plan_worker_memory(cfg, data, plan))
        baseline = fit_on_cluster(cfg, data)
        result = _fit(cfg, data, plan, callbacks or [], tracked.ref if tracked else None, baseline)
        published = _publish_best(cfg, result, tracked)
        ok = True
        return published
    finally:
        if tracked:
            tracked.finish(ok)


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, TrainingData]:
    """Every check that needs no cluster, before any long work: config, output, model, data, metric, method.
    Returns the config with absolute paths (Tune trials and Ray workers run in other directories) and what the
    data holds."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, output=storage.absolute(cfg.output), train=_absolute_inputs(cfg.train),
                              validation=_absolute_inputs(cfg.validation),
                              model=cfg.model if not os.path.isdir(cfg.model) else os.path.abspath(cfg.model))
    storage.check_writable(cfg.output)
    model_dir = resolve_model_dir(cfg.model)  # fail now, not on a worker, when the model can't be found offline
    check_max_length(cfg, model_dir)
    length_sample: list[str] | None = [] if "auto" in (cfg.max_length, cfg.long_text) else None
    data = inspect_training_data(cfg, length_sample)
    log.info("data: %d train / %d validation rows, %s, %d labels, from %d file(s)", data.n_train,
             data.n_validation, data.space.task, len(data.space.names), len(data.train_files))
    if length_sample is not None:
        cfg = _lengths_from_sample(model_dir, length_sample, cfg, data.space.task)
    data.space = dataclasses.replace(data.space, class_bias=class_prior_bias(data, cfg.class_prior))
    if data.space.class_bias:
        log.info("class prior: the validation label mix differs from training; logit bias per class %s",
                 dict(zip(data.space.names, data.space.class_bias, strict=True)))
    _check_best_metric(cfg, data)
    _check_method(cfg, model_dir, data)
    return cfg, data


def _plan_worker_memory(cfg: TrainConfig, data: TrainingData, plan: TrainPlan) -> int | None:
    """The training micro-batch's token budget, planned on the driver from the nodes' memory so a run that cannot
    fit fails now (exit 2), not as a killed worker. GPU workers plan from their device's memory when they start."""
    import ray

    from bertclf.model.adapters import apply_method, hf_model
    from bertclf.model.modeling import build_classifier
    from bertclf.resources import use_bf16
    from bertclf.training.memory import GIB, plan_for_model, train_workers_share

    if plan.use_gpu and cfg.max_tokens_per_batch == "auto" and cfg.worker_memory_gb is None:
        log.info("memory: micro-batches planned by each GPU worker from its device's memory")
        return None
    model = apply_method(build_classifier(resolve_model_dir(cfg.model), data.space, cfg.reinit_pooler), cfg)
    device = "cuda" if plan.use_gpu else "cpu"
    share = (int(cfg.worker_memory_gb * GIB) if cfg.worker_memory_gb is not None
             else train_workers_share(ray.nodes(), plan.num_workers, plan.cpus_per_worker))
    memory = plan_for_model(model, hf_model(model).config, cfg, share_bytes=share, device_type=device,
                            bf16=use_bf16(cfg.precision, device))
    log.info(memory.describe())
    return memory.max_tokens_per_batch


def _lengths_from_sample(model_dir: str, texts: list[str], cfg: TrainConfig, task: str) -> TrainConfig:
    """max_length and long_text where they are auto, from the sampled training texts' token counts."""
    tokenizer = load_tokenizer(model_dir)
    counts = token_counts(tokenizer, texts)
    if cfg.max_length == "auto":
        limit = model_length_limit(model_dir, tokenizer, cfg.prefix_length if cfg.method == "prefix" else 0)
        length, at_quantile = auto_max_length(counts, limit)
        log.info("max_length auto: %d (%.0f%% of %d sampled training texts fit in %d tokens; the model takes %d)",
                 length, 100 * LENGTH_QUANTILE, len(texts), at_quantile, limit)
        cfg = dataclasses.replace(cfg, max_length=length)
    if cfg.long_text == "auto" and cfg.train_windows == "sample":
        log.info("long_text auto: chunk (train_windows sample: every window trains, so every window is pooled)")
        cfg = dataclasses.replace(cfg, long_text="chunk")
    elif cfg.long_text == "auto":
        choice, share = auto_long_text(counts, int(cfg.max_length), task)
        why = ("validation, scoring and every load pool windows of each text" if choice == "chunk" else
               "multi-class texts keep their first window; long_text chunk pools windows instead"
               if task == "multi_class" and share > CHUNK_WHEN_LONGER else "")
        log.info("long_text auto: %s (%.1f%% of %d sampled training texts are longer than %d tokens%s)", choice,
                 100 * share, len(texts), cfg.max_length, f"; {why}" if why else "")
        cfg = dataclasses.replace(cfg, long_text=choice)
    return cfg


def _absolute_inputs(inputs: str | list[str] | None) -> str | list[str] | None:
    if inputs is None or isinstance(inputs, str):
        return inputs and storage.absolute(inputs)
    return [storage.absolute(uri) for uri in inputs]


def _check_best_metric(cfg: TrainConfig, data: TrainingData) -> None:
    allowed = {"val_loss", "f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro"}
    allowed |= {"accuracy"} if data.space.task == "multi_class" else {"subset_accuracy", "hamming_loss"}
    if cfg.best_metric not in allowed:
        raise ConfigError(f"best_metric {cfg.best_metric!r} is not a {data.space.task} metric; "
                         f"choose from {sorted(allowed)}")


def _check_method(cfg: TrainConfig, model_dir: str, data: TrainingData) -> None:
    """Build the model for the method once here, so a wrong LoRA target fails before any worker starts."""
    if cfg.method == "full":
        return
    from bertclf.model.adapters import apply_method, tuning_info
    from bertclf.model.modeling import build_classifier

    info = tuning_info(apply_method(build_classifier(model_dir, data.space, cfg.reinit_pooler), cfg), cfg)
    log.info("method %s %s: %s of %s parameters train", cfg.method, info.settings,
             f"{info.trainable_parameters:,}", f"{info.total_parameters:,}")


def _fit(cfg: TrainConfig, data: TrainingData, plan: TrainPlan, callbacks: list, tracked: TrackingRef | None,
         baseline: tuple[Baseline, np.ndarray]):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = storage.resolve(cfg.output)
    trainer = TorchTrainer(
        train_loop_per_worker,
        # rank 0 logs each epoch to MLflow itself, from the record it writes to metrics.jsonl (bertclf.tracking)
        train_loop_config={"cfg": cfg, "data": data, "plan": plan, "tracking": tracked, "baseline": baseline},
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker={"CPU": plan.cpus_per_worker}),
        run_config=RunConfig(
            name=RAY_RUN_NAME, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=cfg.best_metric,
                                               checkpoint_score_order=cfg.best_mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
        datasets={"train": train_dataset(data, cfg.seed, plan.data_cpus)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def _publish_best(cfg: TrainConfig, result, tracked: tracking.Run | None = None) -> TrainResult:
    """Copy Ray's best checkpoint, without optimizer state, to <output>/best/ (bertclf.json last); when tracked,
    with tracking.json (so `bertclf report` finds the run) and logged to the run as its checkpoint/ artifacts."""
    if not result.best_checkpoints:
        raise RuntimeError(f"training produced no checkpoint under {storage.join(cfg.output, RAY_RUN_NAME)}")
    ordered = sorted(result.best_checkpoints, key=lambda cm: cm[1][cfg.best_metric], reverse=cfg.best_mode == "max")
    best_ckpt, best_metrics = ordered[0]
    best_uri = storage.join(cfg.output, "best")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(best_ckpt.to_directory(str(Path(tmp) / "ckpt")))
        checkpoint.strip_training_state(local)
        if tracked:
            (local / tracking.TRACKING_FILE).write_text(tracked.ref.to_json(indent=2))
        checkpoint.publish(local, best_uri)
        if tracked:
            tracked.log_artifacts(local, "checkpoint")
            tracked.set_tags({"bertclf.best_epoch": str(int(best_metrics["epoch"])), "bertclf.best_uri": best_uri})
    history = checkpoint.read_metrics(storage.join(cfg.output, METRICS_FILE))
    best = next(r for r in history if r.epoch == int(best_metrics["epoch"]))
    log.info("best checkpoint (epoch %s, %s=%.4f) committed to %s", best.epoch, cfg.best_metric,
             best_metrics[cfg.best_metric], best_uri)
    return TrainResult(best_uri=best_uri, best=best, epochs_run=len(history), history=history)

