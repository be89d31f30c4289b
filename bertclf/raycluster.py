"""Connecting to Ray: an existing cluster (RAY_ADDRESS, `ray job submit`, `ray start`) or a local one."""

from __future__ import annotations

import logging
import os

from bertclf import storage

log = logging.getLogger("bertclf")

WORKER_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "BERTCLF_S3_RETRIES",
                   "BERTCLF_TEST_KILL_WORKER", "BERTCLF_TEST_FAIL_UNIT")


def connect(address: str | None = None) -> dict[str, float]:
    """Join the cluster this process belongs to, or start a local one; returns its total resources.

    Driver-only environment variables don't reach workers of a `ray start` cluster, so the AWS and HF
    settings of this process go to the workers through runtime_env (unless a job already set one).
    """
    import ray

    if not ray.is_initialized():
        in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        env = {**storage.aws_env(), **{k: os.environ[k] for k in WORKER_ENV_VARS if k in os.environ}}
        kwargs: dict = {"address": address or os.environ.get("RAY_ADDRESS"), "log_to_driver": True}
        if not in_job and env:
            kwargs["runtime_env"] = {"env_vars": env}
        ray.init(**kwargs)
    resources = ray.cluster_resources()
    log.info("ray: connected, cluster resources CPU=%s GPU=%s", resources.get("CPU", 0), resources.get("GPU", 0))
    return resources
