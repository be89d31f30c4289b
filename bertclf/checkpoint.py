"""The checkpoint format: a Hugging Face model directory plus bertclf.json, weights only as safetensors.

bertclf.json is written last and is what makes a directory a checkpoint: a half-written one has none.
Optimizer state for resuming lives beside it in safetensors + JSON, so nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertclf import storage
from bertclf.errors import CheckpointError, RecordError
from bertclf.labels import LabelSpace
from bertclf.records import CheckpointMeta, EpochRecord

MARKER = "bertclf.json"
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
ADAPTER_DIR = "adapter"  # peft's adapter files (bertclf.adapters)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoadedCheckpoint:
    """A checkpoint available on local disk, with its metadata."""

    uri: str
    local_dir: Path
    meta: CheckpointMeta

    @property
    def space(self) -> LabelSpace:
        return self.meta.labels

    @property
    def max_length(self) -> int:
        return self.meta.max_length

    def fingerprint(self) -> str:
        """sha256 of the weights (and the adapter's, when it has one), so scores can be traced to the exact model
        that made them."""
        h = hashlib.sha256()
        files = [self.local_dir / "model.safetensors"]
        if self.meta.tuning.adapter:
            files.append(self.local_dir / self.meta.tuning.adapter / ADAPTER_WEIGHTS)
        for path in files:
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that shape the results, read from package metadata: importing torch and
    transformers just for `__version__` would slow the scoring driver's commit."""
    from importlib.metadata import PackageNotFoundError, version

    from bertclf import __version__

    out = {"bertclf": __version__}
    for package in ("ray", "torch", "transformers", "pyarrow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out["python"] = platform.python_version()
    return out


def save_model_dir(directory: Path, model, tokenizer, meta: CheckpointMeta) -> None:
    """Write model (safetensors), tokenizer and, last, bertclf.json into a local directory."""
    from bertclf import adapters

    directory.mkdir(parents=True, exist_ok=True)
    adapters.save(directory, model)
    tokenizer.save_pretrained(directory)
    (directory / MARKER).write_text(dataclasses.replace(meta, versions=versions()).to_json(indent=2))


def save_train_state(directory: Path, optimizer, scheduler, state: dict) -> None:
    """Optimizer and scheduler state for resuming, as safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {}
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(directory / TRAIN_STATE_TENSORS))
    (directory / TRAIN_STATE_JSON).write_text(json.dumps(
        {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(), **state}, default=str))


def load_train_state(directory: Path, optimizer, scheduler) -> dict:
    """Restore optimizer and scheduler from save_train_state; returns the extra state dict."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / TRAIN_STATE_TENSORS))
    extra = json.loads((directory / TRAIN_STATE_JSON).read_text())
    per_param: dict[int, dict] = {}
    for name, tensor in tensors.items():
        idx, key = name.split(".", 1)
        per_param.setdefault(int(idx), {})[key] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": extra.pop("param_groups")})
    scheduler.load_state_dict(extra.pop("scheduler"))
    return extra


def strip_training_state(directory: Path) -> None:
    """What only resuming needs leaves a checkpoint before it is published: optimizer state, and a LoRA adapter
    that is already merged into the weights (a prefix adapter stays: the model needs it)."""
    for name in (TRAIN_STATE_TENSORS, TRAIN_STATE_JSON):
        (directory / name).unlink(missing_ok=True)
    meta = CheckpointMeta.from_json((directory / MARKER).read_text())
    if meta.tuning.adapter is None:
        shutil.rmtree(directory / ADAPTER_DIR, ignore_errors=True)


def load(uri: str) -> LoadedCheckpoint:
    """Open a checkpoint (local or s3://, downloaded once per node); errors say what is wrong with it."""
    try:
        if not storage.exists(uri):
            raise CheckpointError(f"checkpoint {uri} does not exist")
        local = storage.local_copy(uri, MARKER)
    except FileNotFoundError:
        raise CheckpointError(
            f"{uri} is not a bertclf checkpoint: it has no {MARKER} (not a checkpoint, or one whose writing "
            "did not finish)") from None
    except storage.StorageError as exc:
        raise CheckpointError(f"checkpoint {uri} can't be read: {exc}") from None
    missing = [n for n in ("config.json", "model.safetensors") if not (local / n).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {uri} is incomplete: missing {missing}")
    try:
        meta = CheckpointMeta.from_json((local / MARKER).read_text())
    except RecordError as exc:
        raise CheckpointError(f"checkpoint {uri}: {MARKER} can't be read: {exc}") from None
    return LoadedCheckpoint(uri=uri, local_dir=local, meta=meta)


def publish(local_dir: Path, uri: str) -> None:
    """Commit a finished checkpoint directory at `uri` (e.g. <output>/best), marker last."""
    storage.replace_dir(local_dir, uri, marker=MARKER)


def read_metrics(uri: str) -> list[EpochRecord]:
    """A run's metrics.jsonl, one EpochRecord per epoch."""
    text = storage.read_bytes(uri).decode()
    return [EpochRecord.from_json(line) for line in text.splitlines() if line.strip()]


def run_history(uri: str, meta: CheckpointMeta) -> list[EpochRecord]:
    """Every epoch of the run a checkpoint came from: its run directory's metrics.jsonl when there is one
    (`<run>/best` -> `<run>/metrics.jsonl`), else the epochs up to the checkpoint recorded in bertclf.json."""
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."
    try:
        return read_metrics(storage.join(parent, "metrics.jsonl"))
    except (FileNotFoundError, storage.StorageError, OSError, RecordError):
        return meta.history
