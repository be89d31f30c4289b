"""Logging: the level from --log-level / BERTCLF_LOG_LEVEL, a timestamp, level and `bertclf.<module>` name on
every line, third-party INFO kept out at the default level, the CLI's output changing with the level, `--version`,
what a job's driver adds to its runtime_env, and Ray worker processes set up by bertclf's hook (one private Ray)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from bertclf import __version__, logs
from bertclf.cli import main
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import ConfigError
from bertclf.resources import LOG_SETUP_HOOK, SETUP_HOOK_ENV_VAR, _job_additions

REPO = Path(__file__).resolve().parents[1]

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) (\S+): (.*)$")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    """setup() changes process-wide state: put the levels and handlers back for the tests that follow."""
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("bertclf").level,
             {n: logging.getLogger(n).level for n in logs.NOISY})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    logging.getLogger("bertclf").setLevel(saved[2])
    for name, level in saved[3].items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def _records(out: str) -> list[tuple[str, str, str]]:
    return [m.groups() for line in out.splitlines() if (m := LINE.match(line))]


def test_level_from_flag_then_environment_then_info(monkeypatch):
    assert logs.resolve_level() == "INFO"
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    assert logs.resolve_level() == "DEBUG"
    assert logs.resolve_level("warn") == "WARNING"  # the flag wins
    monkeypatch.setenv(logs.LEVEL_ENV, "loud")
    with pytest.raises(ConfigError, match="BERTCLF_LOG_LEVEL: unknown log level 'LOUD'"):
        logs.resolve_level()


def test_every_line_has_time_level_and_module_logger(capsys):
    assert logs.setup("INFO") == "INFO"
    logging.getLogger("bertclf.scoring.driver").info("scored %d rows", 3)
    logging.getLogger("bertclf.training.worker").warning("slow")
    logging.getLogger("bertclf.training.worker").debug("not at INFO")
    assert _records(capsys.readouterr().out) == [("INFO", "bertclf.scoring.driver", "scored 3 rows"),
                                                 ("WARNING", "bertclf.training.worker", "slow")]
    assert os.environ[logs.LEVEL_ENV] == "INFO"  # exported: the Ray workers this process starts read it


def test_third_party_info_is_quiet_by_default_and_shown_at_debug(capsys):
    logs.setup()
    logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    logging.getLogger("some.library").info("chatter")
    logging.getLogger("some.library").warning("a real problem")
    assert [r[1:] for r in _records(capsys.readouterr().out)] == [("some.library", "a real problem")]
    logs.setup("DEBUG")
    logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    logging.getLogger("bertclf.x").debug("ours at DEBUG")
    logging.getLogger("some.library").debug("their DEBUG stays out")
    assert [r[0] for r in _records(capsys.readouterr().out)] == ["INFO", "DEBUG"]


def test_setup_twice_writes_each_line_once(capsys):
    logs.setup()
    logs.setup(tag="trial t1")
    logging.getLogger("bertclf.tuning.driver").info("once")
    assert _records(capsys.readouterr().out) == [("INFO", "bertclf.tuning.driver", "[trial t1] once")]


def test_ray_data_progress_only_at_debug():
    logs.setup("INFO")
    assert not logs.ray_data_progress()
    logs.setup("DEBUG")
    assert logs.ray_data_progress()


def test_cli_output_follows_the_log_level(tiny_model, tmp_path, capsys, monkeypatch):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label")
    argv = ["predict", "--checkpoint", str(ckpt), "hello world"]
    assert main([*argv, "--log-level", "DEBUG"]) == 0
    debug = capsys.readouterr().out
    assert ("DEBUG", "bertclf.cli", f"bertclf {__version__} predict on python") in [
        (lvl, name, msg[:len(f"bertclf {__version__} predict on python")]) for lvl, name, msg in _records(debug)]
    assert main([*argv, "--log-level", "WARNING"]) == 0
    quiet = capsys.readouterr().out
    assert _records(quiet) == [] and "predicted:" in quiet
    monkeypatch.setenv(logs.LEVEL_ENV, "DEBUG")  # the variable does what the flag does
    assert main(argv) == 0
    assert any(r[0] == "DEBUG" for r in _records(capsys.readouterr().out))
    monkeypatch.setenv(logs.LEVEL_ENV, "LOUD")
    assert main(argv) == 2
    assert "unknown log level 'LOUD'" in capsys.readouterr().err


def test_cli_refuses_a_bad_progress_interval_and_keeps_it_out_of_the_environment(capsys, monkeypatch):
    monkeypatch.delenv("BERTCLF_PROGRESS_SECONDS", raising=False)
    assert main(["predict", "--checkpoint", "nowhere", "x", "--progress-seconds", "0"]) == 2
    assert "BERTCLF_PROGRESS_SECONDS" in capsys.readouterr().err
    assert "BERTCLF_PROGRESS_SECONDS" not in os.environ, "a refused interval must not reach later runs or workers"


def test_version_comes_from_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"bertclf {version('bertclf')}"


def test_a_job_driver_adds_only_what_its_job_does_not_set(monkeypatch):
    env = {logs.LEVEL_ENV: "DEBUG", "BERTCLF_PROGRESS_SECONDS": "10"}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_additions(env) == {"worker_process_setup_hook": LOG_SETUP_HOOK, "env_vars": env}
    job = {"runtime_env": {"worker_process_setup_hook": "mine.hook", "env_vars": {logs.LEVEL_ENV: "WARNING"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_additions(env) == {"env_vars": {"BERTCLF_PROGRESS_SECONDS": "10"}}  # Ray refuses to merge clashes
    job = {"runtime_env": {"env_vars": {SETUP_HOOK_ENV_VAR: "x", logs.LEVEL_ENV: "INFO",
                                        "BERTCLF_PROGRESS_SECONDS": "5"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_additions(env) == {}


WORKER_SCRIPT = textwrap.dedent("""
    import logging, ray
    from bertclf import logs
    from bertclf.resources import connect

    logs.setup()
    connect()

    @ray.remote
    def work():
        logging.getLogger("bertclf.in_worker").info("hello from a worker")
        logging.getLogger("bertclf.in_worker").debug("worker debug line")
        logging.getLogger("chatty.lib").info("third-party info")
        return 1

    assert ray.get(work.remote()) == 1
    ray.shutdown()
""")


def test_ray_workers_log_like_the_driver(tmp_path):
    """A private Ray started by bertclf.resources.connect: the worker's line reaches the driver's output with the
    same format and level (BERTCLF_LOG_LEVEL from the driver), through Ray's worker_process_setup_hook."""
    # a Ray temp dir of its own (short: Ray's socket paths must fit 107 bytes), so no other Ray on the host is joined
    ray_tmp = tempfile.mkdtemp(prefix="bl-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, logs.LEVEL_ENV: "INFO",
           "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=240, cwd=tmp_path)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    worker_lines = [line for line in out.splitlines() if "bertclf.in_worker" in line or "chatty.lib" in line]
    assert len(worker_lines) == 1, out[-3000:]
    prefix, _, line = re.sub(r"\x1b\[[0-9;]*m", "", worker_lines[0]).partition(") ")  # Ray colours its prefix
    assert prefix.startswith("(work pid=")  # Ray's prefix for a streamed worker line
    assert LINE.match(line).groups() == ("INFO", "bertclf.in_worker", "hello from a worker")
