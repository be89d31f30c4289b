"""Ports on 127.0.0.1: a free one for a server started next, and waiting until a server answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel says is unused on HOST right now, for a server started next."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until something accepts TCP on HOST:port; False on timeout or as soon as `proc` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                return False
            time.sleep(0.2)


def http_ok(url: str) -> bool:
    """The URL answers 2xx now; refused, reset or 5xx while a server starts all mean "not ready"."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


__all__ = ["HOST", "free_port", "http_ok", "wait_for_port"]
