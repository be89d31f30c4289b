"""Fault injection for the integration tests, installed in every Ray worker process by the tests' runtime_env
(`worker_process_setup_hook: faults.install`), so the library carries no test hooks.

Each fault is armed by writing a control file whose path is in the worker's environment:
- FAULT_KILL_WORKER: holds an epoch index; the last rank deletes the file and exits hard at the start of
  that epoch (once per arming).
- FAULT_FAIL_UNIT: while it holds a string, scoring units whose input file name contains it fail.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

KILL_WORKER = "FAULT_KILL_WORKER"
FAIL_UNIT = "FAULT_FAIL_UNIT"


def _armed(variable: str) -> str | None:
    path = os.environ.get(variable)
    if not path or not os.path.exists(path):
        return None
    return Path(path).read_text().strip()


def _patch_training_worker(module: ModuleType) -> None:
    original = module.train_one_epoch

    def train_one_epoch(w, epoch: int):
        armed = _armed(KILL_WORKER)
        if armed is not None and w.rank == w.world - 1 and int(armed) == epoch:
            os.unlink(os.environ[KILL_WORKER])
            print(f"fault injection: worker {w.rank} exits at epoch {epoch}", flush=True)
            os._exit(1)
        return original(w, epoch)

    module.train_one_epoch = train_one_epoch


def _patch_scoring_actor(module: ModuleType) -> None:
    original = module.UnitScorer.score_unit

    def score_unit(self, unit, batches):
        armed = _armed(FAIL_UNIT)
        if armed and armed in os.path.basename(unit.uri):
            raise RuntimeError(f"injected failure for {unit.uri}")
        return original(self, unit, batches)

    module.UnitScorer.score_unit = score_unit


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "bertclf.training.worker": _patch_training_worker,
    "bertclf.scoring.actor": _patch_scoring_actor,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches a module right after its first import, so workers that never use it never import it."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """The worker_process_setup_hook: patch the modules named in PATCHES when (or if already) imported; set up
    logging as bertclf's own hook does in production (bertclf.resources.LOG_SETUP_HOOK)."""
    from bertclf.logs import setup_worker

    setup_worker()
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
