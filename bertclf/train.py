"""Data-parallel fine-tuning with Ray Train: validate on the driver, train on N workers, publish the best.

`run(TrainConfig)` is what `bertclf train` and `jobs/train.py` call. The run directory is the output URI:
Ray Train's checkpoints live under `<output>/ray_train/`, per-epoch metrics in `<output>/metrics.jsonl`,
and the best checkpoint is committed to `<output>/best/` when training ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertclf import checkpoint, storage
from bertclf.batching import length_grouped_batches
from bertclf.config import TrainConfig, as_dict
from bertclf.data import TrainingData, inspect_training_data, train_dataset, validation_rows
from bertclf.labels import probabilities
from bertclf.metrics import classification_metrics, tune_thresholds
from bertclf.modeling import build_classifier, keep_head_in_fp32, load_tokenizer, resolve_model_dir
from bertclf.raycluster import connect
from bertclf.resources import TrainPlan, plan_training, use_bf16

log = logging.getLogger("bertclf")

RAY_RUN_NAME = "ray_train"
# Fault injection for tests: a path; when a file exists there holding an epoch number, the last worker
# deletes it and dies at the start of that epoch (once per arming).
KILL_WORKER_ENV = "BERTCLF_TEST_KILL_WORKER"


@dataclass
class TrainResult:
    best_uri: str
    best_metrics: dict
    epochs_run: int
    history: list[dict]


def run(cfg: TrainConfig) -> TrainResult:
    """Validate everything, train with Ray Train, and commit the best checkpoint to <output>/best/."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, output=storage.absolute(cfg.output),
                              model=cfg.model if not os.path.isdir(cfg.model) else os.path.abspath(cfg.model))
    storage.check_writable(cfg.output)
    resolve_model_dir(cfg.model)  # fail now, not on a worker, when the model can't be found offline
    data = inspect_training_data(cfg)
    log.info("data: %d train / %d validation rows, %s, %d labels, from %d file(s)", data.n_train,
             data.n_validation, data.space.task, len(data.space.names), len(data.train_files))
    _check_best_metric(cfg, data)

    cluster = connect(cfg.ray_address)
    plan = plan_training(cluster, cfg.num_workers, str(cfg.use_gpu).lower(), cfg.cpus_per_worker)
    log.info("resources: cluster has %s; plan: %s", {k: v for k, v in cluster.items() if k in ("CPU", "GPU")},
             plan.describe())
    result = _fit(cfg, data, plan)
    return _publish_best(cfg, result)


def _check_best_metric(cfg: TrainConfig, data: TrainingData) -> None:
    allowed = {"val_loss", "f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro"}
    allowed |= {"accuracy"} if data.space.task == "multi_class" else {"subset_accuracy", "hamming_loss"}
    if cfg.best_metric not in allowed:
        raise ValueError(f"best_metric {cfg.best_metric!r} is not a {data.space.task} metric; "
                         f"choose from {sorted(allowed)}")


def _fit(cfg: TrainConfig, data: TrainingData, plan: TrainPlan):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = storage.resolve(cfg.output)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "data": data, "plan": plan},
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker={"CPU": plan.cpus_per_worker}),
        run_config=RunConfig(
            name=RAY_RUN_NAME, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=cfg.best_metric,
                                               checkpoint_score_order=cfg.best_mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": train_dataset(data, cfg.seed, plan.data_cpus)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def _publish_best(cfg: TrainConfig, result) -> TrainResult:
    """Copy Ray's best checkpoint, without optimizer state, to <output>/best/ (bertclf.json last)."""
    if not result.best_checkpoints:
        raise RuntimeError(f"training produced no checkpoint under {storage.join(cfg.output, RAY_RUN_NAME)}")
    ordered = sorted(result.best_checkpoints, key=lambda cm: cm[1][cfg.best_metric], reverse=cfg.best_mode == "max")
    best_ckpt, best_metrics = ordered[0]
    best_uri = storage.join(cfg.output, "best")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(best_ckpt.to_directory(str(Path(tmp) / "ckpt")))
        for name in (checkpoint.TRAIN_STATE_TENSORS, checkpoint.TRAIN_STATE_JSON):
            (local / name).unlink(missing_ok=True)
        checkpoint.publish(local, best_uri)
    metrics_jsonl = storage.read_bytes(storage.join(cfg.output, "metrics.jsonl")).decode()
    history = [json.loads(line) for line in metrics_jsonl.splitlines() if line.strip()]
    log.info("best checkpoint (epoch %s, %s=%.4f) committed to %s", best_metrics.get("epoch"), cfg.best_metric,
             best_metrics[cfg.best_metric], best_uri)
    return TrainResult(best_uri=best_uri, best_metrics=best_metrics, epochs_run=len(history), history=history)


# ---------------------------------------------------------------- on each Ray Train worker


def train_loop_per_worker(config: dict) -> None:
    """One DDP worker: resume if a checkpoint exists, train epochs, evaluate, report and checkpoint."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model
    from transformers import get_linear_schedule_with_warmup

    cfg: TrainConfig = config["cfg"]
    data: TrainingData = config["data"]
    plan: TrainPlan = config["plan"]
    torch.set_num_threads(plan.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _seed(cfg.seed + rank)
    device = get_device()
    bf16 = use_bf16(cfg.precision, device.type)

    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    model = build_classifier(model_dir, data.space, cfg.reinit_pooler, device.type)
    keep_head_in_fp32(model)  # as load_for_inference does: validation computes probabilities as scoring does
    resume = ray.train.get_checkpoint()
    if resume:
        from safetensors.torch import load_file

        with resume.as_directory() as d:
            model.load_state_dict(load_file(str(Path(d) / "model.safetensors")), strict=False)
    # gradients live in DDP's all-reduce buckets: no extra copy per step (and less memory)
    model = prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    raw_model = model.module if hasattr(model, "module") else model

    head_lr = cfg.head_learning_rate or 20 * cfg.learning_rate
    # fused: one kernel per step instead of a loop of element-wise ops; measured 163 -> 26 ms per CPU step
    optimizer = torch.optim.AdamW(_param_groups(raw_model, cfg.weight_decay, cfg.learning_rate, head_lr),
                                  fused=device.type in ("cpu", "cuda"))
    rows_per_worker = data.n_train // world
    steps_per_epoch = max(1, math.ceil(rows_per_worker / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state = {"epoch": 0, "history": []}
    if resume:
        with resume.as_directory() as d:
            state = checkpoint.load_train_state(Path(d), optimizer, scheduler)
        if rank == 0:
            log.info(f"resumed from checkpoint after epoch {state['epoch']}")
    history: list[dict] = state["history"]

    loss_fn = torch.nn.BCEWithLogitsLoss() if data.space.task == "multi_label" else torch.nn.CrossEntropyLoss()
    shard = ray.train.get_dataset_shard("train")
    val_texts, val_targets = validation_rows(data, rank, world)
    if rank == 0:
        log.info(f"{world} worker(s), device {device.type}, bf16 {bf16}, {steps_per_epoch} steps/epoch, "
                 f"{cfg.epochs} epoch(s)")

    for epoch in range(state["epoch"], cfg.epochs):
        _maybe_kill_for_test(epoch, rank, world)
        model.train()
        t0 = time.perf_counter()
        seen = tokens = steps = 0
        loss_sum = 0.0
        batches = WaitClock(shard.iter_batches(batch_size=cfg.batch_size * cfg.length_group_batches,
                                               batch_format="numpy", prefetch_batches=1,
                                               local_shuffle_buffer_size=cfg.shuffle_buffer_rows,
                                               local_shuffle_seed=cfg.seed + epoch))
        for batch in length_grouped_batches(batches, tokenizer, max_length=cfg.max_length,
                                            batch_size=cfg.batch_size, seed=cfg.seed * 1000 + epoch):
            enc = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
            target = torch.as_tensor(batch.target, device=device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(**enc).logits
            loss = loss_fn(logits.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            seen += len(target)
            tokens += int(batch.attention_mask.sum())  # the CPU copy: no device sync per step
            loss_sum += float(loss.detach())
            if rank == 0 and (steps % max(1, steps_per_epoch // 10) == 0):
                rate = seen * world / (time.perf_counter() - t0)
                log.info(f"epoch {epoch + 1}/{cfg.epochs} step {steps}/{steps_per_epoch} "
                         f"loss {loss_sum / steps:.4f} {rate:.1f} samples/s")
        train_seconds = time.perf_counter() - t0

        model.eval()
        local_logits = _validation_logits(raw_model, tokenizer, val_texts, cfg, bf16, device)
        gathered = [None] * world
        if world > 1:
            dist.all_gather_object(gathered, (local_logits, val_targets))
        else:
            gathered = [(local_logits, val_targets)]
        totals = torch.tensor([seen, tokens, loss_sum, steps, batches.first_seconds or 0.0, batches.wait_seconds],
                              dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)

        metrics: dict = {}
        ckpt = None
        tmp = None
        if rank == 0:
            logits = np.concatenate([g[0] for g in gathered])
            targets = np.concatenate([g[1] for g in gathered])
            record = _epoch_record(epoch, data, logits, targets, totals.tolist(), train_seconds, world)
            history.append(record)
            metrics = {k: v for k, v in record.items() if isinstance(v, int | float) and v is not None}
            _print_epoch(record, cfg)
            storage.write_bytes(storage.join(cfg.output, "metrics.jsonl"),
                                "".join(json.dumps(r) + "\n" for r in history).encode())
            if _should_checkpoint(epoch, cfg, history):
                tmp = Path(tempfile.mkdtemp(prefix="bertclf-ckpt-"))
                checkpoint.save_model_dir(tmp, raw_model, tokenizer, _checkpoint_meta(cfg, data, record, history))
                checkpoint.save_train_state(tmp, optimizer, scheduler, {"epoch": epoch + 1, "history": history})
                ckpt = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=ckpt)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class WaitClock:
    """Iterates a batch iterator and times how long the loop waited for data: the first batch, and in all.

    Why: a data pipeline that can't keep up looks like slow training; these two numbers tell them apart.
    """

    def __init__(self, batches):
        self._it = iter(batches)
        self.first_seconds: float | None = None
        self.wait_seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self._it)
        finally:
            waited = time.perf_counter() - t0
            self.wait_seconds += waited
            if self.first_seconds is None:
                self.first_seconds = waited


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model, weight_decay: float, lr: float, head_lr: float) -> list[dict]:
    """Encoder at `lr`, new head + pooler at `head_lr`; no weight decay on biases and LayerNorm weights."""
    from bertclf.modeling import head_parameter_names

    head = head_parameter_names(model)
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (False, True)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias"))
            groups[(name in head, decays)].append(param)
    return [{"params": params, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decays else 0.0}
            for (is_head, decays), params in groups.items() if params]


def _validation_logits(model, tokenizer, texts: list[str], cfg: TrainConfig, bf16: bool, device) -> np.ndarray:
    from bertclf.inference import logits_for_texts

    return logits_for_texts(model, tokenizer, texts, max_length=cfg.max_length, bf16=bf16, device=device)


def _epoch_record(epoch: int, data: TrainingData, logits: np.ndarray, targets: np.ndarray, totals: list[float],
                  train_seconds: float, world: int) -> dict:
    """Everything known about one epoch: losses, metrics (tuned thresholds for multi-label), throughput."""
    import torch

    seen, tokens, loss_sum, steps, first_batch_sum, data_wait_sum = totals
    space = data.space
    probs = probabilities(space.task, logits)
    t_logits = torch.from_numpy(logits)
    if space.task == "multi_label":
        val_loss = torch.nn.functional.binary_cross_entropy_with_logits(t_logits, torch.from_numpy(targets)).item()
        thresholds = tune_thresholds(targets, probs)
        at_half = classification_metrics(space, targets, probs, [0.5] * len(space.names))
    else:
        val_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(targets).long()).item()
        thresholds, at_half = None, None
    metrics = classification_metrics(space, targets, probs, thresholds)
    record = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1), "val_loss": val_loss,
              **{k: v for k, v in metrics.items() if k != "per_label"},
              "train_seconds": train_seconds, "samples_per_s": seen / train_seconds if train_seconds else 0.0,
              "tokens_per_s": tokens / train_seconds if train_seconds else 0.0, "workers": world,
              # mean over workers: the wait for the first batch (pipeline start) and for all batches
              "first_batch_seconds": first_batch_sum / world, "data_wait_seconds": data_wait_sum / world,
              "validation_rows": int(len(targets))}
    if at_half is not None:
        record["f1_macro_at_0.5"] = at_half["f1_macro"]
        record["f1_micro_at_0.5"] = at_half["f1_micro"]
        record["thresholds"] = dict(zip(space.names, thresholds, strict=True))
    record["per_label"] = metrics["per_label"]
    return record


def _print_epoch(record: dict, cfg: TrainConfig) -> None:
    keys = ["train_loss", "val_loss", "f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro", "accuracy",
            "subset_accuracy", "hamming_loss", "f1_macro_at_0.5"]
    parts = [f"{k} {record[k]:.4f}" for k in keys if isinstance(record.get(k), float)]
    log.info(f"epoch {record['epoch']}/{cfg.epochs} " + " ".join(parts)
             + f" | {record['samples_per_s']:.1f} samples/s, {record['train_seconds']:.1f}s "
             f"(waiting for data {record['data_wait_seconds']:.1f}s, of which first batch "
             f"{record['first_batch_seconds']:.1f}s)")


def _should_checkpoint(epoch: int, cfg: TrainConfig, history: list[dict]) -> bool:
    """Periodic, last epoch, or a new best by the chosen metric."""
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
        return True
    values = [h[cfg.best_metric] for h in history if h.get(cfg.best_metric) is not None]
    if not values:
        return False
    best = max(values) if cfg.best_mode == "max" else min(values)
    return values[-1] == best


def _checkpoint_meta(cfg: TrainConfig, data: TrainingData, record: dict, history: list[dict]) -> dict:
    space = data.space
    if "thresholds" in record:
        space = type(space)(task=space.task, names=space.names, thresholds=list(record["thresholds"].values()))
    return {
        "format": 1, "labels": space.to_dict(), "max_length": cfg.max_length, "epoch": record["epoch"],
        "metrics": {k: v for k, v in record.items() if k != "per_label"}, "per_label": record["per_label"],
        "history": [{k: v for k, v in h.items() if k != "per_label"} for h in history],
        "training_config": as_dict(cfg), "data": {"fingerprint": data.fingerprint, "train_files": data.train_files,
                                                   "validation_files": data.validation_files,
                                                   "n_train": data.n_train, "n_validation": data.n_validation,
                                                   "label_counts": data.label_counts},
    }


def _maybe_kill_for_test(epoch: int, rank: int, world: int) -> None:
    """Fault injection for the resume test: the last worker dies, hard, at the start of the armed epoch."""
    arm = os.environ.get(KILL_WORKER_ENV)
    if not arm or rank != world - 1 or not os.path.exists(arm):
        return
    if epoch == int(Path(arm).read_text().strip()):
        os.unlink(arm)
        log.info(f"test fault injection: worker {rank} exits at epoch {epoch}")
        os._exit(1)
