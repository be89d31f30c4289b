"""What each Ray Train worker runs: set up (model, optimizer, resume), then per epoch: train, validate, report.

Every worker calls `ray.train.report` once per epoch (Train V2 wants the same count on every rank); rank 0
computes the epoch's metrics from everyone's validation logits, writes metrics.jsonl and the checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertclf import storage
from bertclf.config import TrainConfig
from bertclf.model import checkpoint
from bertclf.progress import Progress, format_duration
from bertclf.records import EpochRecord, TuningInfo
from bertclf.resources import TrainPlan, use_bf16
from bertclf.training.batching import length_grouped_batches
from bertclf.training.data import TrainingData, positive_weights, validation_rows
from bertclf.training.epochs import (
    EpochTotals,
    checkpoint_meta,
    epoch_record,
    log_epoch,
    should_checkpoint,
    with_baseline,
)
from bertclf.training.memory import MemoryPlan, plan_for_model
from bertclf.training.step import StepContext, accumulate_gradients

if TYPE_CHECKING:
    from bertclf.baseline import Baseline

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class Worker:
    """One DDP worker's state across epochs."""

    cfg: TrainConfig
    data: TrainingData
    rank: int
    world: int
    step: StepContext  # the model as prepared by Ray Train (DDP-wrapped when world > 1), device, bf16, loss, budget
    tokenizer: Any
    raw_model: Any
    optimizer: Any
    scheduler: Any
    shard: Any
    val_texts: list[str]
    val_targets: np.ndarray
    steps_per_epoch: int
    tuning: TuningInfo
    start_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    tracker: Any = None  # rank 0's bertclf.tracking.Run when the run is tracked
    baseline: Baseline | None = None  # the run's TF-IDF baseline (bertclf.training.classical), saved in checkpoints
    val_baseline: np.ndarray | None = None  # its probabilities for this rank's validation rows


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on each worker. Each epoch's data (Ray Data's read tasks, in their own processes) starts
    before the work ahead of its first step: the model's load for a fresh run's first epoch, the previous epoch's
    validation for the others (a resumed run's first epoch is only known once its checkpoint is read)."""
    import ray.train

    cfg = config["cfg"]
    early = reading(ray.train.get_dataset_shard("train"), cfg, 0) if ray.train.get_checkpoint() is None else None
    worker = set_up(cfg, config["data"], config["plan"])
    if config.get("baseline") is not None:
        worker.baseline, val_probs = config["baseline"]
        worker.val_baseline = val_probs[worker.rank::worker.world]
    if worker.rank == 0 and config.get("tracking") is not None:
        from bertclf import tracking

        worker.tracker = tracking.attach(config["tracking"])
    for epoch in range(worker.start_epoch, worker.cfg.epochs):
        totals = train_one_epoch(worker, epoch, early)
        early = reading(worker.shard, cfg, epoch + 1) if epoch + 1 < cfg.epochs else None
        validate_and_report(worker, epoch, totals)


def set_up(cfg: TrainConfig, data: TrainingData, plan: TrainPlan) -> Worker:
    """Model, optimizer and schedule for this rank; weights, optimizer state and history from a checkpoint
    when Ray Train resumes one."""
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model
    from transformers import get_linear_schedule_with_warmup

    from bertclf.model import adapters
    from bertclf.model.modeling import build_classifier, keep_head_in_fp32, load_tokenizer, resolve_model_dir

    torch.set_num_threads(plan.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _seed(cfg.seed + rank)
    device = get_device()
    bf16 = use_bf16(cfg.precision, device.type)

    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    model = adapters.apply_method(build_classifier(model_dir, data.space, cfg.reinit_pooler, device.type), cfg)
    keep_head_in_fp32(adapters.hf_model(model))  # as load_for_inference: validation computes probabilities as scoring
    tuning = adapters.tuning_info(model, cfg)
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            adapters.load_weights(model, Path(d))
    # gradients live in DDP's all-reduce buckets: no extra copy per step (and less memory)
    model = prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    raw_model = model.module if hasattr(model, "module") else model

    head_lr = cfg.head_learning_rate or 20 * cfg.learning_rate
    # fused: one kernel per step instead of a loop of element-wise ops
    optimizer = torch.optim.AdamW(_param_groups(raw_model, cfg.weight_decay, adapters.encoder_learning_rate(cfg),
                                                head_lr),
                                  fused=device.type in ("cpu", "cuda"))
    steps_per_epoch = max(1, math.ceil((data.n_train // world) / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    start_epoch, history = 0, []
    if resume:
        with resume.as_directory() as d:
            state = checkpoint.load_train_state(Path(d), optimizer, scheduler)
        start_epoch = int(state["epoch"])
        history = [EpochRecord.from_dict(h) for h in state["history"]]
        if rank == 0:
            log.info(f"resumed from checkpoint after epoch {start_epoch}")

    loss_fn = loss_function(data, cfg.positive_weight, device)
    max_tokens = plan.max_tokens_per_batch or gpu_memory_plan(cfg, raw_model, device, bf16).max_tokens_per_batch
    val_texts, val_targets = validation_rows(data, rank, world)
    if rank == 0:
        log.info(f"{world} worker(s), device {device.type}, bf16 {bf16}, {steps_per_epoch} steps/epoch, "
                 f"{cfg.epochs} epoch(s); method {cfg.method}: {tuning.trainable_parameters:,} of "
                 f"{tuning.total_parameters:,} parameters train")
    step = StepContext(model=model, device=device, bf16=bf16, loss_fn=loss_fn, max_tokens_per_batch=max_tokens)
    return Worker(cfg=cfg, data=data, rank=rank, world=world, step=step, tokenizer=tokenizer, raw_model=raw_model,
                  optimizer=optimizer, scheduler=scheduler, shard=ray.train.get_dataset_shard("train"),
                  val_texts=val_texts, val_targets=val_targets, steps_per_epoch=steps_per_epoch, tuning=tuning,
                  start_epoch=start_epoch, history=history)


def gpu_memory_plan(cfg: TrainConfig, model, device, bf16: bool) -> MemoryPlan:
    """The micro-batch plan of a GPU worker, from its device's memory (the driver can't see it)."""
    import torch

    from bertclf.model.adapters import hf_model

    memory = plan_for_model(model, hf_model(model).config, cfg, device_type=device.type, bf16=bf16,
                            share_bytes=int(0.9 * torch.cuda.get_device_properties(device).total_memory))
    log.info(memory.describe())
    return memory


def loss_function(data: TrainingData, positive_weight: str, device: Any) -> Any:
    """BCE over labels (optionally weighting rare labels' positives) for multi-label; cross-entropy for multi-class."""
    import torch

    if data.space.task != "multi_label":
        return torch.nn.CrossEntropyLoss()
    weights = positive_weights(data, positive_weight)
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weights, device=device) if weights else None)


def epoch_batches(shard, cfg: TrainConfig, epoch: int):
    """This rank's rows of one epoch, in read batches of `length_group_batches` steps, shuffled locally per epoch."""
    return shard.iter_batches(batch_size=cfg.batch_size * cfg.length_group_batches, batch_format="numpy",
                              prefetch_batches=1, local_shuffle_buffer_size=cfg.shuffle_buffer_rows,
                              local_shuffle_seed=cfg.seed + epoch)


def reading(shard, cfg: TrainConfig, epoch: int) -> WaitClock:
    """An epoch's batches, the first of them already being fetched (in a thread)."""
    return WaitClock(epoch_batches(shard, cfg, epoch), fetch_first=True)


def train_one_epoch(w: Worker, epoch: int, started: WaitClock | None = None) -> EpochTotals:
    """One pass over this rank's shard in length-grouped batches; returns this rank's counts and timings.
    `started`: this epoch's batches, already being read (train_loop_per_worker starts them early)."""
    import torch

    cfg = w.cfg
    w.step.model.train()
    t0 = time.perf_counter()
    totals = EpochTotals()
    loss_sum = torch.zeros((), device=w.step.device)  # summed on the device: read back only for a progress line
    # rank 0 speaks for all: every rank runs the same number of steps of the same size
    steps = Progress(f"epoch {epoch + 1}/{cfg.epochs}", w.steps_per_epoch, "steps", log=log) if w.rank == 0 else None
    batches = started or WaitClock(epoch_batches(w.shard, cfg, epoch))
    for batch in length_grouped_batches(batches, w.tokenizer, max_length=cfg.max_length,
                                        batch_size=cfg.batch_size, seed=cfg.seed * 1000 + epoch,
                                        windows=cfg.train_windows, stride=cfg.chunk_stride):
        loss = accumulate_gradients(w.step, batch)
        torch.nn.utils.clip_grad_norm_(w.step.model.parameters(), cfg.max_grad_norm)
        w.optimizer.step()
        w.scheduler.step()
        w.optimizer.zero_grad(set_to_none=True)
        totals.steps += 1
        totals.seen += len(batch.target)
        totals.tokens += int(batch.attention_mask.sum())  # the mask's CPU copy: no device sync
        loss_sum += loss
        if steps is not None:
            steps.update(totals.steps, lambda: f"loss {float(loss_sum) / totals.steps:.4f}, "  # noqa: B023 - runs now
                                              f"{totals.seen * w.world / (time.perf_counter() - t0):.1f} samples/s"
                                              + run_projection(w, epoch, totals.steps, time.perf_counter() - t0))
    totals.loss_sum = float(loss_sum)
    totals.seconds = time.perf_counter() - t0
    totals.first_batch_seconds = batches.first_seconds or 0.0
    totals.data_wait_seconds = batches.wait_seconds
    return totals


def run_projection(w: Worker, epoch: int, steps_done: int, seconds: float) -> str:
    """In the run's first epoch: the whole run's projected training time at the rate so far (every epoch left,
    validation not counted), so a run that can't fit the time budget is stopped in minutes, not hours."""
    if epoch != w.start_epoch or steps_done <= 0:
        return ""
    steps_left = w.steps_per_epoch * (w.cfg.epochs - epoch) - steps_done
    total = seconds + steps_left * seconds / steps_done
    return f"; whole run ({w.cfg.epochs - w.start_epoch} epoch(s)) projected {format_duration(total)} of training"


def validate_and_report(w: Worker, epoch: int, totals: EpochTotals) -> None:
    """Gather validation logits and counts on rank 0, record the epoch, checkpoint it when due, report."""
    import ray.train
    import torch.distributed as dist

    from bertclf.model.inference import logits_for_texts

    w.step.model.eval()
    local_logits = logits_for_texts(w.raw_model, w.tokenizer, w.val_texts, max_length=w.cfg.max_length,
                                    bf16=w.step.bf16, device=w.step.device, long_text=w.cfg.long_text,
                                    chunk_stride=w.cfg.chunk_stride, task=w.data.space.task)
    gathered: list = [(local_logits, w.val_targets, w.val_baseline)]
    summed = totals
    if w.world > 1:
        gathered = [None] * w.world
        dist.all_gather_object(gathered, (local_logits, w.val_targets, w.val_baseline))
        summed = totals.all_reduced()

    metrics: dict[str, float] = {}
    ckpt = tmp = None
    if w.rank == 0:
        logits = np.concatenate([g[0] for g in gathered])
        targets = np.concatenate([g[1] for g in gathered])
        baseline = np.concatenate([g[2] for g in gathered]) if w.baseline is not None else None
        record = epoch_record(epoch, w.data.space, logits, targets, summed, totals.seconds, w.world)
        if baseline is not None:
            record = with_baseline(record, w.data.space, targets, logits, baseline, w.cfg)
        w.history.append(record)
        metrics = record.scalars()
        log_epoch(record, w.cfg.epochs)
        storage.write_bytes(storage.join(w.cfg.output, METRICS_FILE),
                            "".join(r.to_json() + "\n" for r in w.history).encode())
        if w.tracker is not None:  # after metrics.jsonl: a tracker that fails only warns
            w.tracker.log_epoch(record)
        if should_checkpoint(epoch, w.cfg, w.history):
            tmp = Path(tempfile.mkdtemp(prefix="bertclf-ckpt-"))
            meta = checkpoint_meta(w.cfg, w.data, record, w.history, w.tuning)
            from bertclf.model import adapters

            adapters.save_model_dir(tmp, w.raw_model, w.tokenizer, meta, w.baseline)
            checkpoint.save_train_state(tmp, w.optimizer, w.scheduler,
                                        {"epoch": epoch + 1, "history": [r.to_dict() for r in w.history]})
            ckpt = ray.train.Checkpoint.from_directory(str(tmp))
    ray.train.report(metrics, checkpoint=ckpt)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


class WaitClock:
    """Iterates a batch iterator and times how long the loop waited for data: the first batch, and in all.

    Why: a data pipeline that can't keep up looks like slow training; these two numbers tell them apart.
    """

    def __init__(self, batches, fetch_first: bool = False):
        """`fetch_first`: start fetching the first batch now, in a thread, so that what the caller does until its
        first `next` (loading the model) overlaps the data pipeline's start; the wait then counted is what is left."""
        self._it = iter(batches)
        self.first_seconds: float | None = None
        self.wait_seconds = 0.0
        self._first: Future | None = None
        if fetch_first:
            pool = ThreadPoolExecutor(1, thread_name_prefix="bertclf-first-batch")
            self._first = pool.submit(next, self._it)
            pool.shutdown(wait=False)  # the one call runs on; the thread ends with it

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            if self._first is not None:
                first, self._first = self._first, None
                return first.result()  # the batch, or what fetching it raised (StopIteration: an empty shard)
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
    """Encoder (or its adapter) at `lr`, new head + pooler at `head_lr`; no weight decay on biases and LayerNorm
    weights. Frozen weights (under LoRA and prefix-tuning) are left out."""
    from bertclf.model.adapters import hf_model
    from bertclf.model.modeling import head_parameter_ids

    head = head_parameter_ids(hf_model(model))
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (False, True)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias"))
            groups[(id(param) in head, decays)].append(param)
    return [{"params": params, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decays else 0.0}
            for (is_head, decays), params in groups.items() if params]


__all__ = ["METRICS_FILE", "Worker", "gpu_memory_plan", "loss_function", "set_up", "train_loop_per_worker",
           "train_one_epoch", "validate_and_report"]
