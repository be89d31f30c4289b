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

    def train_one_epoch(w, epoch: int, *rest):
        armed = _armed(KILL_WORKER)
        if armed is not None and w.rank == w.world - 1 and int(armed) == epoch:
            os.unlink(os.environ[KILL_WORKER])
            print(f"fault injection: worker {w.rank} exits at epoch {epoch}", flush=True)
            os._exit(1)
        return original(w, epoch, *rest)

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


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a server (the tests' S3), switched between ways of failing:

    - "pass": forward both ways;
    - "reset": every connection, open or new, is reset (RST) at once: storage refusing the network;
    - "stall": open connections stop forwarding and new ones are accepted and never answered: a network that drops
      packets, where only the clients' timeouts end a request.

    Used from the test process only; the Ray workers reach it through AWS_ENDPOINT_URL like any S3 endpoint.
    """

    def __init__(self, target_port: int):
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.target_port = target_port
        self.mode = "pass"
        self.connections = 0
        self._open: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str) -> None:
        assert mode in ("pass", "reset", "stall"), mode
        self.mode = mode
        if mode == "reset":
            with self._lock:
                sockets, self._open = self._open, []
            for s in sockets:
                self._reset(s)

    def _reset(self, s) -> None:
        import struct

        try:
            s.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "reset":
                self._reset(client)
                continue
            if self.mode == "stall":
                self._threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                upstream = self._socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _swallow(self, s) -> None:
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, a, b) -> None:
        try:
            while data := a.recv(65536):
                while self.mode == "stall":  # hold the bytes: the other side waits for its timeout
                    import time

                    time.sleep(0.2)
                if self.mode == "reset":
                    raise OSError("reset")
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(self._socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.set("reset")
        self.listener.close()
