"""One logging setup for the `bertclf` command, the jobs and every Ray worker process of a run.

Lines carry a UTC timestamp, the level and the logger (`bertclf.<module>`), so a Ray job log that interleaves
the driver with its workers still reads in order and can be filtered. The level comes from `--log-level`, else
BERTCLF_LOG_LEVEL, else INFO; third-party loggers stay at WARNING unless the level is DEBUG. Lines go to stdout,
where they always went: Ray streams a worker's stdout to the driver, and `ray job logs` shows the driver's.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from bertclf.errors import ConfigError

LEVEL_ENV = "BERTCLF_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL = "INFO"
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Chatty at INFO (or DEBUG) and of no use in a job log unless something is wrong.
NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "fsspec", "httpx", "httpcore", "matplotlib",
         "PIL", "asyncio", "numexpr", "torch", "peft", "captum")


class _StdoutHandler(logging.StreamHandler):
    """A handler bound to whatever sys.stdout is when a line is written, not when it was set up: pytest's
    capture and Ray's worker output redirection both replace sys.stdout after start-up."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def resolve_level(level: str | None = None) -> str:
    """The level name to use: the argument (a --log-level flag), else BERTCLF_LOG_LEVEL, else INFO."""
    chosen = (level or os.environ.get(LEVEL_ENV) or DEFAULT_LEVEL).strip().upper()
    if chosen == "WARN":
        chosen = "WARNING"
    if chosen not in LEVELS:
        source = "--log-level" if level else LEVEL_ENV
        raise ConfigError(f"{source}: unknown log level {chosen!r}; use one of {', '.join(LEVELS)}")
    return chosen


def setup(level: str | None = None, tag: str | None = None) -> str:
    """Configure this process's logging (again: idempotent) and export the level, so the Ray workers this
    process starts set up alike (bertclf.resources.connect passes it on). `tag` prefixes every message (a Tune
    trial's id). Returns the level name."""
    name = resolve_level(level)
    os.environ[LEVEL_ENV] = name
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdoutHandler)]:
        root.removeHandler(handler)
    handler = _StdoutHandler()
    fmt = FORMAT.replace("%(message)s", f"[{tag.replace('%', '%%')}] %(message)s") if tag else FORMAT
    formatter = logging.Formatter(fmt, DATE_FORMAT)
    formatter.converter = time.gmtime  # UTC: driver and workers on different hosts agree
    handler.setFormatter(formatter)
    root.addHandler(handler)
    debug = name == "DEBUG"
    root.setLevel(logging.INFO if debug else logging.WARNING)  # third-party records below this never show
    logging.getLogger("bertclf").setLevel(name)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn lines get the same prefix and obey the level
    if not debug:
        _quiet_hf_progress_bars()
    return name


def versions() -> str:
    """The versions a bug report needs, from package metadata (nothing imported): python, torch, ray, transformers."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"python {sys.version.split()[0]}"]
    for name in ("torch", "ray", "transformers"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def _quiet_hf_progress_bars() -> None:
    """transformers draws a tqdm bar per checkpoint load ("Loading weights"); in a job log each is a line of noise.
    HF_HUB_DISABLE_PROGRESS_BARS reaches processes that import transformers later; one that already did is told."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def setup_worker() -> None:
    """Ray's worker_process_setup_hook: each worker process of a run logs like its driver (level from the env)."""
    try:
        setup()
    except ConfigError:  # a bad BERTCLF_LOG_LEVEL was refused on the driver already; never fail a worker for it
        setup(DEFAULT_LEVEL)


def ray_data_progress() -> bool:
    """Ray Data's own progress output (operator bars, or timed log lines when stdout is not a terminal): on at
    DEBUG only. At INFO bertclf's progress lines say rows, rate and ETA in one line instead of a block per
    operator every few seconds."""
    return logging.getLogger("bertclf").getEffectiveLevel() <= logging.DEBUG
