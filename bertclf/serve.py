"""`bertclf serve`: an online endpoint beside the nightly batch, with Ray Serve.

POST /predict {"texts": [...]} -> each text's predicted labels and per-label probabilities, computed by the same
`Predictor` as `bertclf predict` and the scoring actors. Texts from concurrent requests are batched together
(`serve.batch`) and each batch runs length-sorted, token-budget micro-batches. Bad requests get a 4xx with a
message and never reach the model; GET /healthz and GET /labels answer without it.

For KubeRay's RayService (cluster/kuberay/rayservice.yaml): `import_path: bertclf.serve:build_app`.
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request) at runtime
import asyncio
import dataclasses
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from bertclf.config import ServeConfig, load_config

log = logging.getLogger("bertclf")

APP_NAME = "bertclf"
api = FastAPI(title="bertclf", description="labels and per-label probabilities for texts")


class RequestError(Exception):
    """A request the endpoint refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_texts(body: bytes, cfg: ServeConfig) -> list[str]:
    """The texts of a /predict body, or a RequestError that says what is wrong with it."""
    if len(body) > cfg.max_texts_per_request * (cfg.max_text_chars * 4 + 16) + 1024:
        raise RequestError(413, "request body too large")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or "texts" not in payload:
        raise RequestError(422, 'expected a JSON object {"texts": ["...", ...]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not texts:
        raise RequestError(422, '"texts" is empty: send at least one text')
    if len(texts) > cfg.max_texts_per_request:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {cfg.max_texts_per_request}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] is {type(text).__name__}, not a string")
        if len(text) > cfg.max_text_chars:
            raise RequestError(413, f"texts[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}")
    return texts


@serve.deployment
@serve.ingress(api)
class Classifier:
    """One replica: the checkpoint loaded once, texts from concurrent requests batched into forward passes."""

    def __init__(self, cfg: ServeConfig):
        import torch

        from bertclf.inference import Predictor

        torch.set_num_threads(max(1, int(cfg.cpus_per_replica)))
        self.cfg = cfg
        self.predictor = Predictor.load(cfg.checkpoint, precision=cfg.precision)
        self._predict_one.set_max_batch_size(cfg.max_batch_size)
        self._predict_one.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.started = time.time()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_one(self, texts: list[str]) -> list[dict]:
        # in a thread: /healthz keeps answering while a batch runs
        return await asyncio.to_thread(self.predictor.predict, texts)

    @api.post("/predict")
    async def predict(self, request: Request) -> Any:
        try:
            texts = parse_texts(await request.body(), self.cfg)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        rows = await asyncio.gather(*(self._predict_one(t) for t in texts))
        return {"predictions": [{"predicted": r["predicted"], "probabilities": r["probabilities"]} for r in rows]}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "checkpoint": self.cfg.checkpoint, "uptime_s": round(time.time() - self.started, 1)}

    @api.get("/labels")
    async def labels(self) -> dict:
        space = self.predictor.space
        return {"task": space.task, "labels": space.names,
                "thresholds": dict(zip(space.names, space.thresholds, strict=True))}


def application(cfg: ServeConfig):
    """The Serve application for a config (replicas and their resources from it)."""
    cfg.validate()
    return Classifier.options(
        num_replicas=cfg.replicas,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    ).bind(cfg)


def build_app(args: dict[str, Any]):
    """Application builder for `serve run` / RayService: `args` are ServeConfig keys."""
    return application(load_config(ServeConfig, None, args))


def start(cfg: ServeConfig) -> str:
    """Start Serve on this Ray cluster with the endpoint at http://host:port/ and return that URL."""
    from bertclf import storage
    from bertclf.checkpoint import load
    from bertclf.resources import connect

    cfg = dataclasses.replace(cfg, checkpoint=storage.absolute(cfg.checkpoint))  # replicas run elsewhere
    load(cfg.checkpoint)  # a bad checkpoint fails here, by name, not in a replica
    connect(cfg.ray_address)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(application(cfg), name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}"
    log.info("serving %s at %s (%d replica(s)); POST %s/predict, GET %s/healthz, GET %s/labels", cfg.checkpoint,
             url, cfg.replicas, url, url, url)
    return url


def serve_forever(cfg: ServeConfig) -> None:
    """`bertclf serve`: start, then keep serving until interrupted."""
    start(cfg)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping the endpoint")
    finally:
        serve.delete(APP_NAME)
