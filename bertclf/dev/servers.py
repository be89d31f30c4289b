"""The servers tests talk to as production talks to AWS and MLflow: moto's standalone S3 server and `mlflow server`
on 127.0.0.1. Both run as subprocesses of this interpreter (moto and mlflow are dev-only: never imported here)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bertclf.dev.ports import HOST


def find_tool(name: str) -> str | None:
    """`name` next to this interpreter first (a venv's bin works without activating it), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if os.access(here, os.X_OK) else shutil.which(name)


def start_moto(port: int, log_path: Path | str, env: dict | None = None, detach: bool = False) -> subprocess.Popen:
    """moto's S3 server on HOST:port, output to log_path (never our stdout, which `$(...)` would wait on);
    `detach`: its own session, so it outlives its starter and ignores the terminal's signals. RuntimeError when
    moto is not installed."""
    moto = [sys.executable, "-m", "moto.server"] if importlib.util.find_spec("moto") else [find_tool("moto_server")]
    if moto[0] is None:
        raise RuntimeError("moto not found: pip install 'moto[server]'")
    with open(log_path, "wb") as out:
        return subprocess.Popen([*moto, "-H", HOST, "-p", str(port)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=detach)


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS settings that point boto3 and pyarrow at a test S3 server."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1"}


def start_mlflow(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on HOST:port with a SQLite backend store and artifacts served through it (the client uploads
    over HTTP, as against a remote server), all under `root`, output to root/server.log; in its own process group,
    for stop_group."""
    # the server's background job runner (a pool of huey consumers) is for GenAI jobs: not needed, and slow to start
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(uri: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Wait for an MLflow server's /health; RuntimeError with the log's tail when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s}s: {log_path.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM a server started in its own process group, SIGKILL it after grace_s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


__all__ = ["find_tool", "s3_env", "start_mlflow", "start_moto", "stop_group", "wait_healthy"]
