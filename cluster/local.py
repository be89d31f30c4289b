#!/usr/bin/env python3
"""Local single-node cluster: a Ray head on 127.0.0.1 plus a moto S3 server, so jobs/*.py are submitted exactly as
on a real cluster (`ray job submit`) and read/write s3:// URIs. Its ports and moto starter are bertclf.dev's, which
the tests use too.

    eval "$(.venv/bin/python cluster/local.py up)"   # start, wait until jobs can be submitted, print the exports
    .venv/bin/python cluster/local.py status|down    # down stops ONLY what up started: never a bare `ray stop`

Environment: RAY_PORT (6380), RAY_DASHBOARD_PORT (8265, Jobs API), RAY_DASHBOARD_AGENT_PORT (52365), RAY_CLIENT_PORT
(10001), S3_PORT (5555): a port given must be free; a default that is taken becomes a free port. RAY_NUM_CPUS,
RAY_NUM_GPUS, RAY_START_EXTRA_ARGS (appended to `ray start`), RAY_WAIT_S (90), BERTCLF_S3=0 (no S3),
BERTCLF_RAY_TMPDIR (/tmp/ray-bertclf: the --temp-dir by which down finds the Ray processes; not RAY_TMPDIR, which
every ray.init() reads), BERTCLF_STATE_DIR (.bertclf-local under the repo: state.json, logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from bertclf.dev.ports import HOST, free_port, http_ok, wait_for_port
from bertclf.dev.servers import find_tool, start_moto

REPO = Path(__file__).resolve().parents[1]
PORTS = {"RAY_PORT": 6380, "RAY_DASHBOARD_PORT": 8265, "RAY_DASHBOARD_AGENT_PORT": 52365, "RAY_CLIENT_PORT": 10001,
         "S3_PORT": 5555}
USAGE = "usage: cluster/local.py up|down|status   (environment knobs: see the top of cluster/local.py)"


def log(msg: str) -> None:
    print(f"[local.py] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> NoReturn:
    raise SystemExit(f"[local.py] error: {msg}")


def pick_ports(names: Iterable[str]) -> dict[str, int]:
    """Per knob: the port given (it must be free: fail clearly), else the default when free, else a free one, so
    that another Ray or moto on this host (tests start their own) never collides with ours."""
    ports: dict[str, int] = {}
    for name in names:
        port = int(os.environ.get(name) or PORTS[name])
        while wait_for_port(port, 0) or port in ports.values():
            if os.environ.get(name):
                die(f"port {port} ({name}) is already in use: set {name} to a free port")
            port = free_port()
        ports[name] = port
    return ports


def start_ray_head(temp_dir: Path, ports: dict[str, int], env: dict, log_path: Path) -> None:
    """`ray start --head` with our ports and --temp-dir (by which `down` finds its processes). The Jobs API and
    the agent listen on HOST only, but Ray binds the GCS on all interfaces: on a shared host firewall RAY_PORT."""
    ray = find_tool("ray") or die("'ray' not found next to this python or on PATH")
    args = [ray, "start", "--head", f"--node-ip-address={HOST}", f"--port={ports['RAY_PORT']}",
            f"--dashboard-host={HOST}", f"--dashboard-port={ports['RAY_DASHBOARD_PORT']}", "--include-dashboard=true",
            f"--dashboard-agent-listen-port={ports['RAY_DASHBOARD_AGENT_PORT']}", "--disable-usage-stats",
            f"--ray-client-server-port={ports['RAY_CLIENT_PORT']}", f"--temp-dir={temp_dir}"]
    args += [f"--num-{k}={os.environ[f'RAY_NUM_{k.upper()}']}" for k in ("cpus", "gpus")
             if os.environ.get(f"RAY_NUM_{k.upper()}")] + shlex.split(os.environ.get("RAY_START_EXTRA_ARGS", ""))
    log(f"{shlex.join(args)}  (log: {log_path})")
    with open(log_path, "wb") as out:
        if subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            die(f"ray start failed (log: {log_path})")


def _procs() -> dict[int, tuple[int, list[str]]]:
    """One /proc snapshot: pid -> (ppid, argv + where stdout/stderr go). The Ray client server's only tie to its
    cluster is its log files in the session dir: no --temp-dir argument, and `ray start` detached it."""
    table = {}
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            words = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            for fd in ("1", "2"):
                with contextlib.suppress(OSError):
                    words.append(os.readlink(d / "fd" / fd))
            table[int(d.name)] = (ppid, words)
    return table


def pid_alive(pid: int) -> bool:
    """Running: a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ray_pids(temp_dir: Path | str) -> set[int]:
    """The processes whose arguments or logs name this --temp-dir or a session in it (gcs, raylet, dashboard, ...;
    workers are their descendants). Exact match: /tmp/ray-bertclf never matches /tmp/ray, /tmp/ray-bertclf2 or
    /tmp/ray-bertclf/ray (a default Ray living inside it)."""
    d = str(temp_dir)
    return {pid for pid, (_, argv) in _procs().items() if pid != os.getpid() and any(
        (v := a.split("=", 1)[-1]) == d or v.startswith(d + "/session_") for a in argv)}


def stop_pids(pids: Iterable[int], grace_s: float = 10.0) -> None:
    """SIGTERM the given pids and all their descendants, SIGKILL whatever still runs after grace_s; nothing else."""
    table, targets = _procs(), set(pids)
    while new := {pid for pid, (ppid, _) in table.items() if ppid in targets and pid not in targets}:
        targets |= new  # ray workers rename themselves "ray::..." and lose their arguments: found as descendants
    targets = {p for p in targets if p in table and p != os.getpid()}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while (targets := {p for p in targets if pid_alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not targets:
            return
        log(f"still running after {sig.name}: {sorted(targets)}")


def read_state(state_dir: Path) -> dict | None:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def moto_running(state: dict) -> bool:
    """The recorded moto pid is alive and still a moto (not a reused pid)."""
    pid = state.get("moto_pid")
    return bool(pid) and pid_alive(pid) and "moto" in " ".join(_procs().get(pid, (0, []))[1])


def up(state_dir: Path) -> int:
    """Start moto and the Ray head, record them before anything runs (so a failure or `down` can stop them)."""
    temp_dir = Path(os.environ.get("BERTCLF_RAY_TMPDIR") or "/tmp/ray-bertclf").absolute()
    if temp_dir in {Path("/"), Path("/tmp"), Path("/tmp/ray"), Path.home(), REPO}:
        die(f"refusing BERTCLF_RAY_TMPDIR={temp_dir}: give it a directory of its own (down stops what runs in it)")
    state = read_state(state_dir)
    if state and (moto_running(state) or ray_pids(state["temp_dir"])):
        die(f"already up (state in {state_dir}): run 'cluster/local.py down' first")
    if ray_pids(temp_dir):
        die(f"a Ray with --temp-dir={temp_dir} is running, not started here: stop it or set BERTCLF_RAY_TMPDIR")
    s3 = os.environ.get("BERTCLF_S3", "1") != "0"
    ports = pick_ports([*PORTS][:4] + (["S3_PORT"] if s3 else []))
    url = f"http://{HOST}:{ports['RAY_DASHBOARD_PORT']}"
    exports = {"RAY_ADDRESS": url, "RAY_AUTH_MODE": "disabled"} | ({
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports['S3_PORT']}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"} if s3 else {})
    # Jobs inherit the Ray processes' env: auth off (a stray ~/.ray token makes the jobs CLI and the cluster
    # disagree), the S3 settings, and this interpreter's bin first on PATH so that a job's `python` is this one.
    env = {**os.environ, **exports, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS")
    state = {"temp_dir": str(temp_dir), "ports": ports, "moto_pid": None}
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(state))
    try:
        if s3:
            try:
                moto = start_moto(ports["S3_PORT"], state_dir / "moto.log", env, detach=True)
            except RuntimeError as exc:  # moto not installed
                die(f"{exc} (or BERTCLF_S3=0: no S3)")
            (state_dir / "state.json").write_text(json.dumps(state | {"moto_pid": moto.pid}))
        start_ray_head(temp_dir, ports, env, state_dir / "ray-start.log")
        log(f"waiting for the Jobs API at {url}")
        deadline = time.monotonic() + float(os.environ.get("RAY_WAIT_S") or 90)
        while not (http_ok(f"{url}/api/version") and http_ok(f"{url}/api/jobs/")):
            if time.monotonic() > deadline:
                die(f"no Jobs API at {url} (log: {temp_dir}/session_latest/logs/dashboard.log)")
            time.sleep(1)
        if s3 and not wait_for_port(ports["S3_PORT"], 60, moto):
            die(f"moto did not answer on port {ports['S3_PORT']} (log: {state_dir / 'moto.log'})")
    except BaseException:
        log("up failed: stopping what it started")
        down(state_dir)
        raise
    log(f"up: Jobs API {url}, GCS port {ports['RAY_PORT']}, --temp-dir={temp_dir}. Unset RAY_ADDRESS before a plain"
        " ray.init() in this shell: an http:// address is for the Jobs API only")
    print("export " + " ".join(f"{k}={v}" for k, v in exports.items()), flush=True)
    return 0


def down(state_dir: Path) -> int:
    """Stop what `up` recorded (moto by pid, Ray by --temp-dir, with descendants) and nothing else."""
    if (state := read_state(state_dir)) is None:
        log(f"nothing recorded in {state_dir}: nothing to stop")
        return 0
    if moto_running(state):
        log(f"stopping moto (pid {state['moto_pid']})")
        stop_pids([state["moto_pid"]])
    for _ in range(2):  # the second pass catches workers that were being spawned while the raylet stopped
        if pids := ray_pids(state["temp_dir"]):
            log(f"stopping the Ray with --temp-dir={state['temp_dir']}: {len(pids)} processes")
            stop_pids(pids)
    (state_dir / "state.json").unlink()  # the logs stay, for a look after a failed up
    log("down")
    return 0


def status(state_dir: Path) -> int:
    """Each recorded part up or not; 0 when all are."""
    if (state := read_state(state_dir)) is None:
        print(f"none: nothing recorded in {state_dir}")
        return 1
    ports, n = state["ports"], len(ray_pids(state["temp_dir"]))
    ray_up = n > 0 and http_ok(f"http://{HOST}:{ports['RAY_DASHBOARD_PORT']}/api/version")
    print(f"ray: {'up' if ray_up else 'degraded' if n else 'down'} ({n} processes, --temp-dir={state['temp_dir']}, "
          f"GCS port {ports['RAY_PORT']}, Jobs API http://{HOST}:{ports['RAY_DASHBOARD_PORT']})")
    s3_up = "S3_PORT" not in ports or (moto_running(state) and wait_for_port(ports["S3_PORT"], 0))
    print(f"s3:  {'up' if s3_up else 'down'} (moto pid {state['moto_pid']}, port {ports['S3_PORT']})"
          if "S3_PORT" in ports else "s3:  not started (BERTCLF_S3=0)")
    return 0 if ray_up and s3_up else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("up", "down", "status"):
        print(USAGE, file=sys.stderr)
        return 0 if argv in (["-h"], ["--help"]) else 2
    state_dir = REPO / (os.environ.get("BERTCLF_STATE_DIR") or ".bertclf-local")  # an absolute path replaces REPO
    return {"up": up, "down": down, "status": status}[argv[0]](state_dir)


if __name__ == "__main__":
    sys.exit(main())
