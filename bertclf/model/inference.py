"""Fast forward passes over many texts: tokenize once, sort by length, micro-batch by token budget.

Shared by validation during training, `predict`, `evaluate` and the scoring actors (through `Predictor`), so
all of them compute the same probabilities the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bertclf.baseline import Baseline
from bertclf.blend import combine
from bertclf.errors import CheckpointError
from bertclf.labels import LabelSpace
from bertclf.model import compiled
from bertclf.model.compiled import CompiledGraph

log = logging.getLogger(__name__)


def plan_microbatches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped so each padded batch (rows x longest) stays within the token budget.

    Sorting by length first means rows of similar length share a batch and little is spent on padding.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # lengths ascend, so the last row of a candidate batch is its longest
        while end < n and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def pad_batch(token_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest row of this batch only."""
    longest = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def autocast(device_type: str, bf16: bool):
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) if bf16 else nullcontext()


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def encode_texts(tokenizer, texts: list[str], max_length: int, long_text: str = "truncate") -> list[list[int]]:
    """Token ids per text as inference takes them: truncated to max_length with special tokens, or (long_text
    chunk) the whole text's tokens without special tokens, cut into windows when the model runs (`windows`)."""
    if long_text != "chunk":
        return tokenize(tokenizer, texts, max_length)
    return tokenizer(texts, add_special_tokens=False, truncation=False, padding=False, verbose=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def windows(content_ids: list[list[int]], tokenizer, max_length: int,
            stride: int) -> tuple[list[list[int]], np.ndarray]:
    """Each text's windows of at most max_length tokens, wrapped in the tokenizer's own special tokens ([CLS] ...
    [SEP], <s> ... </s>), neighbours sharing `stride` tokens; and the index of the text each window belongs to.
    An empty text is one window of special tokens only."""
    prefix, suffix, room, step = window_layout(tokenizer, max_length, stride)
    out: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(content_ids):
        for start in window_starts(len(ids), room, step):
            out.append([*prefix, *ids[start:start + room], *suffix])
            owner.append(i)
    return out, np.asarray(owner, dtype=np.int64)


def window_layout(tokenizer, max_length: int, stride: int) -> tuple[list[int], list[int], int, int]:
    """(special tokens before, after, text tokens per window, tokens from one window's start to the next)."""
    prefix, suffix = special_tokens_around(tokenizer)
    room = max(1, max_length - len(prefix) - len(suffix))
    return prefix, suffix, room, max(1, room - stride)


def window_starts(tokens: int, room: int, step: int) -> range:
    """Where each window of `room` tokens starts, `step` apart, until one reaches the text's end (one at least)."""
    return range(0, max(1, tokens - room + step), step)


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text's tokens, found by encoding one word with and
    without them (transformers 5 tokenizers no longer expose build_inputs_with_special_tokens)."""
    whole = tokenizer("x", verbose=False)["input_ids"]
    content = tokenizer("x", add_special_tokens=False, verbose=False)["input_ids"]
    for k in range(len(whole) - len(content) + 1):
        if whole[k:k + len(content)] == content:
            return whole[:k], whole[k + len(content):]
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell its special tokens from the text's")


def pool_window_logits(logits: np.ndarray, owner: np.ndarray, texts: int, task: str) -> np.ndarray:
    """One row of logits per text from its windows': the max for multi-label (a label present anywhere in the
    text is present in it), the mean for multi-class (every window votes)."""
    if task == "multi_label":
        pooled = np.full((texts, logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(pooled, owner, logits)
        return pooled
    pooled = np.zeros((texts, logits.shape[1]), dtype=np.float32)
    np.add.at(pooled, owner, logits)
    return pooled / np.bincount(owner, minlength=texts)[:, None].astype(np.float32)


def logits_for_token_ids(model, token_ids: list[list[int]], pad_id: int, *, max_tokens: int, max_rows: int,
                         bf16: bool, device: torch.device,
                         graph: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """float32 logits in the input order, computed in length-sorted micro-batches under inference_mode, by the
    model or by its compiled graph (bertclf.model.compiled: same inputs, logits out, precision built in)."""
    out: np.ndarray | None = None
    with torch.inference_mode(), autocast(device.type, bf16 and graph is None):
        for idx in plan_microbatches([len(t) for t in token_ids], max_tokens, max_rows):
            ids, mask = pad_batch([token_ids[i] for i in idx], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            logits = (graph(ids, mask) if graph is not None
                      else model(input_ids=ids, attention_mask=mask).logits).float().cpu().numpy()
            if out is None:
                out = np.empty((len(token_ids), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    if out is None:
        return np.empty((0, model.config.num_labels), dtype=np.float32)
    return out


def logits_for_texts(model, tokenizer, texts: list[str], *, max_length: int, max_tokens: int = 8192,
                     max_rows: int = 256, bf16: bool = False, device: torch.device | None = None,
                     long_text: str = "truncate", chunk_stride: int = 0, task: str = "multi_label") -> np.ndarray:
    """One row of logits per text; under long_text chunk, pooled over the text's windows."""
    device = device or torch.device("cpu")
    return logits_for_encoded(model, tokenizer, encode_texts(tokenizer, texts, max_length, long_text),
                              max_length=max_length, long_text=long_text, chunk_stride=chunk_stride, task=task,
                              max_tokens=max_tokens, max_rows=max_rows, bf16=bf16, device=device)


def logits_for_encoded(model, tokenizer, token_ids: list[list[int]], *, max_length: int, long_text: str,
                       chunk_stride: int, task: str, max_tokens: int, max_rows: int, bf16: bool,
                       device: torch.device, graph: Callable | None = None) -> np.ndarray:
    """Logits per text from `encode_texts` output: run as they are, or cut into windows and pooled back."""
    if long_text != "chunk":
        return logits_for_token_ids(model, token_ids, tokenizer.pad_token_id, max_tokens=max_tokens,
                                    max_rows=max_rows, bf16=bf16, device=device, graph=graph)
    parts, owner = windows(token_ids, tokenizer, max_length, chunk_stride)
    logits = logits_for_token_ids(model, parts, tokenizer.pad_token_id, max_tokens=max_tokens, max_rows=max_rows,
                                  bf16=bf16, device=device, graph=graph)
    return pool_window_logits(logits, owner, len(token_ids), task)


@dataclass
class Predictor:
    """A checkpoint loaded for inference, with its label space, max length, device and precision."""

    model: Any
    tokenizer: Any
    space: LabelSpace
    max_length: int
    device: torch.device
    bf16: bool = False
    max_tokens: int = 8192
    max_rows: int = 256
    graph: CompiledGraph | None = None
    long_text: str = "truncate"
    chunk_stride: int = 0
    checkpoint: Any = None  # the LoadedCheckpoint it came from: its fingerprint is hashed once, here or by a caller
    baseline: Baseline | None = None  # the checkpoint's TF-IDF baseline, when its blend is used
    blend_weight: float = 1.0  # the transformer's share of the probabilities (bertclf.blend)
    precision: str = ""  # the forward's: fp32, bf16 (autocast) or int8 (bertclf.model.precision); "": by bf16

    def __post_init__(self) -> None:
        self.precision = self.precision or ("bf16" if self.bf16 else "fp32")

    @classmethod
    def load(cls, checkpoint_uri: str, *, device: str | None = None, precision: str = "fp32", max_tokens: int = 8192,
             max_rows: int = 256, compile: str = "off", long_text: str = "checkpoint") -> Predictor:
        """`precision` (auto / fp32 / bf16 / int8): bertclf.model.precision.resolve, auto reading the checkpoint's gate
        record where it can matter. `compile` (on / off / auto): run the checkpoint's graph compiled once per node
        (bertclf.model.compiled; fp32 and bf16 only). `long_text` (checkpoint / truncate / chunk): the checkpoint's way
        with long texts, or another."""
        from bertclf.model import checkpoint
        from bertclf.model import precision as precisions
        from bertclf.model.adapters import load_for_inference

        ckpt = checkpoint.load(checkpoint_uri)
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        gates = (precisions.read_gates(ckpt.uri, ckpt.fingerprint())
                 if precisions.record_needed(precision, target.type) else {})
        chosen = precisions.resolve(precision, target.type, gates)
        model, tokenizer = load_for_inference(ckpt.local_dir, target, ckpt.meta.tuning.adapter)
        if chosen == "int8":
            layers = precisions.quantize_int8(model)
            log.info("precision %s: int8, %d encoder Linear layers quantized%s", precision, layers,
                     f" ({gates['int8'].reason})" if "int8" in gates else "")
        mode, stride = checkpoint.long_text_setting(long_text, ckpt.meta)
        baseline, weight = load_blend(ckpt)
        predictor = cls(model, tokenizer, ckpt.space, ckpt.max_length, target, chosen == "bf16", max_tokens,
                        max_rows, long_text=mode, chunk_stride=stride, checkpoint=ckpt, baseline=baseline,
                        blend_weight=weight, precision=chosen)
        if chosen != "int8" and compiled.wanted(compile, model, target.type):
            predictor.graph = _compiled_graph(predictor, ckpt.fingerprint())
        return predictor

    def _compiled_forward(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The compiled graph once it is there; eager before that, and for good if loading it fails."""
        if self.graph is None:
            return None
        try:
            return self.graph.load_if_ready()
        except Exception as exc:  # noqa: BLE001 - a broken cache entry must not stop scoring: eager still works
            log.warning("compiled graph %s could not be loaded (%s: %s): eager from now on", self.graph.path,
                        type(exc).__name__, exc)
            self.graph = None
            return None

    def windows_for(self, token_ids: list[list[int]]) -> int:
        """How many model inputs these texts make: one each, or their windows under long_text chunk."""
        if self.long_text != "chunk":
            return len(token_ids)
        _, _, room, step = window_layout(self.tokenizer, self.max_length, self.chunk_stride)
        return sum(len(window_starts(len(ids), room, step)) for ids in token_ids)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Per text: truncated ids, or under long_text chunk the whole text's (windows are cut when scoring)."""
        return encode_texts(self.tokenizer, texts, self.max_length, self.long_text)

    @property
    def blends(self) -> bool:
        """Whether the checkpoint's probabilities mix in its TF-IDF baseline."""
        return self.baseline is not None and self.blend_weight < 1.0

    def baseline_probabilities(self, texts: list[str]) -> np.ndarray | None:
        """The baseline's part of these texts' probabilities, or None when the checkpoint does not blend. Computed
        where the texts are (the tokenizing stage on GPU clusters) and handed on with the token ids."""
        return self.baseline.probabilities(texts) if self.blends else None

    def transformer_probabilities(self, token_ids: list[list[int]]) -> np.ndarray:
        """The transformer's own probabilities (what `explain` explains)."""
        logits = logits_for_encoded(self.model, self.tokenizer, token_ids, max_length=self.max_length,
                                    long_text=self.long_text, chunk_stride=self.chunk_stride, task=self.space.task,
                                    max_tokens=self.max_tokens, max_rows=self.max_rows, bf16=self.bf16,
                                    device=self.device, graph=self._compiled_forward())
        return self.space.probabilities(logits)

    def probabilities_for_ids(self, token_ids: list[list[int]], baseline: np.ndarray | None = None) -> np.ndarray:
        """The checkpoint's probabilities: the transformer's, blended with `baseline` (baseline_probabilities of
        the same texts) when the checkpoint blends."""
        probs = self.transformer_probabilities(token_ids)
        if not self.blends:
            return probs
        if baseline is None or len(baseline) != len(token_ids):
            raise ValueError("this checkpoint blends its baseline: pass baseline_probabilities of the same texts")
        return combine(probs, baseline, self.blend_weight)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(rows, labels) float32: sigmoid (multi-label) or softmax (multi-class) per text, blended with the
        baseline's where the checkpoint says so."""
        return self.probabilities_for_ids(self.token_ids(texts), self.baseline_probabilities(texts))

    def predict(self, texts: list[str]) -> list[dict]:
        """One dict per text: its predicted labels and every label's probability (highest first)."""
        probs = self.probabilities(texts)
        names = self.space.names
        predicted = self.space.predict(probs)
        return [{"text": t, "predicted": predicted[i],
                 "probabilities": dict(sorted(zip(names, map(float, probs[i]), strict=True), key=lambda kv: -kv[1]))}
                for i, t in enumerate(texts)]


def load_blend(ckpt) -> tuple[Baseline | None, float]:
    """(baseline, transformer weight) of a LoadedCheckpoint: its baseline only where its blend is used; checkpoints
    from before the baseline existed, or with the blend off, give the transformer alone."""
    blend = ckpt.meta.blend
    if blend is None or not blend.used:
        return None, 1.0
    baseline = Baseline.load(ckpt.local_dir)
    if baseline is None:
        raise CheckpointError(f"checkpoint {ckpt.uri}: bertclf.json blends a baseline at weight {blend.weight} but "
                              "baseline.json is missing: restore it or use another checkpoint")
    return baseline, blend.weight


def _compiled_graph(predictor: Predictor, fingerprint: str) -> CompiledGraph | None:
    """The checkpoint's compiled graph in this node's cache: built here unless it is there or being built."""
    graph = CompiledGraph(compiled.cache_key(fingerprint, predictor.bf16, predictor.max_rows, predictor.max_length))
    try:
        graph.build_if_missing(predictor.model, bf16=predictor.bf16, max_rows=predictor.max_rows,
                            max_length=predictor.max_length, pad_id=predictor.tokenizer.pad_token_id)
    except Exception as exc:  # noqa: BLE001 - any model torch.export can't take still scores, eagerly
        log.warning("compiling the checkpoint's graph failed (%s: %s): scoring eagerly", type(exc).__name__, exc)
        return None
    return graph


def predict_texts(checkpoint_uri: str, texts: list[str]) -> list[dict]:
    """`bertclf predict`: the checkpoint's labels and probabilities for a few texts, in this process."""
    return Predictor.load(checkpoint_uri, device="cpu").predict(texts)


# the interface other modules, jobs and benchmarks use
__all__ = ["Predictor", "encode_texts", "load_blend", "window_layout", "window_starts",
           "logits_for_texts", "pad_batch", "plan_microbatches", "predict_texts",
           "tokenize"]
