"""``gencls serve RUN``: the HTTP API and the web page (FastAPI on uvicorn).

- ``POST /predict``: images as multipart (field ``files``, repeatable) -> per image the class,
  top-k probabilities, the out-of-distribution score and flag.
- ``POST /generate``: ``{"class": "7", "n": 8, "seed": 0}`` -> a PNG grid (methods that generate;
  an unconditional generator's samples are kept where the run's classifier assigns the class).
- ``GET /health``, ``GET /model``, ``GET /docs`` and ``/redoc`` (OpenAPI, served offline), ``GET /``
  the page: draw a digit or drop a file, see the top-k bars, the verdict and generated samples.

Limits answer with 4xx JSON (``{"detail": ...}``): request bytes (413, checked before the body
is parsed), images per request (413), pixels per image (413, read from the header before
decoding), anything that is not an image (415). Decoding runs in a thread pool; the model runs in
one inference thread fed by a queue that gathers concurrent requests into one batch, so the event
loop never waits on the model and requests do not block each other.
"""

import asyncio
import ipaddress
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gencls.errors import GenclsError, InputError
from gencls.imagefile import TooManyPixels, decode_image, png_grid


@dataclass
class ServerLimits:
    max_upload_bytes: int = 10 * 1024 * 1024  # whole request body
    max_images: int = 64  # per /predict request
    max_pixels: int = 16_000_000  # per image, from its header, before decoding
    max_batch: int = 64  # images per model call (a single larger request still goes in one call)
    max_generate: int = 64  # images per /generate request
    max_connections: int | None = 32  # open connections at once (None: no limit); beyond: 503 (memory: at most this many bodies)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before any parsing.

    A declared Content-Length over the limit is refused at once; otherwise the body is read up
    to the limit (chunked uploads included) and replayed to the app.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, int(declared))
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._refuse(send, None)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)

    async def _refuse(self, send, declared):
        detail = (f"request body is {declared} bytes; the limit is {self.limit} bytes" if declared is not None
                  else f"request body is over the limit of {self.limit} bytes")  # chunked: no size announced
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Batcher:
    """Runs ``fn(batch)`` in one inference thread; requests waiting meanwhile form the next batch.

    ``fn`` takes images (N, C, H, W) and returns arrays whose first dimension is N. There is no
    added wait: a request arriving at an idle model is served at once, and under load the queue
    that builds up while the model is busy is taken in one call (up to ``max_batch`` images).
    """

    def __init__(self, fn, max_batch: int = 64):
        self.fn, self.max_batch = fn, max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gencls-inference")
        self.stats = {"requests": 0, "batches": 0, "images": 0, "largest_batch": 0}
        self._loop = self._queue = self._task = None

    def _ensure_worker(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._worker())

    async def submit(self, x: np.ndarray):
        self._ensure_worker()
        fut = self._loop.create_future()
        await self._queue.put((x, fut))
        return await fut

    async def call(self, fn, *args):
        """Run another model call (e.g. generation) in the same inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _worker(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            while n < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
                n += len(items[-1][0])
            live = [(x, f) for x, f in items if not f.done()]  # drop requests whose client went away
            if not live:
                continue
            batch = np.concatenate([x for x, _ in live])
            try:
                outputs = await loop.run_in_executor(self.executor, self.fn, batch)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.stats["batches"] += 1
            self.stats["requests"] += len(live)
            self.stats["images"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            start = 0
            for x, f in live:
                if not f.done():
                    f.set_result(tuple(o[start : start + len(x)] for o in outputs))
                start += len(x)

    def close(self):
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _page() -> str:
    return resources.files("gencls").joinpath("static/index.html").read_text(encoding="utf-8")


def model_info(run, limits: ServerLimits) -> dict[str, Any]:
    from gencls.api import eval_file_name
    from gencls.utils import read_json

    info = {"method": run.method.name, "description": run.method.description, "dataset": run.config.dataset,
            "classes": run.classes, "image_shape": list(run.image_shape), "can_generate": run.method.can_generate,
            "can_condition": run.method.can_condition, "labels": run.config.labels,
            "checkpoint_epoch": run.meta.get("epoch"), "val_error": run.meta.get("val_error"),
            "test_error_percent": None, "ood": {k: run.ood[k] for k in ("score", "threshold", "percentile",
                                                                          "calibrated_on", "higher_means")},
            "limits": asdict(limits)}
    eval_path = run.path / eval_file_name(run) if run.path is not None else None  # None: a bare checkpoint file
    if eval_path is not None and eval_path.exists():
        try:
            ev = read_json(eval_path)
            if (ev.get("checkpoint_epoch") == run.meta.get("epoch")
                    and ev.get("checkpoint_step", run.meta.get("step")) == run.meta.get("step")):
                info["test_error_percent"] = ev.get("error_percent")
                info["ood"]["auroc"] = {k: v.get("auroc") for k, v in (ev.get("ood") or {}).items()}
        except GenclsError:
            pass
    return info


def create_app(run, limits: ServerLimits | None = None):
    """The FastAPI app for a loaded ``Run`` (``gencls.load_run``) or a run folder."""
    import torch
    from fastapi import Body, File, HTTPException, Query, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool

    from gencls.api import _as_run, describe, generate_class, ood_calibration
    from gencls.methods import CannotGenerate

    run = _as_run(run)
    limits = limits or ServerLimits()
    ood_calibration(run)  # before the first request, not during one
    info = model_info(run, limits)
    page = _page()

    def infer(batch: np.ndarray):
        return run.probabilities_and_scores(torch.from_numpy(batch), batch_size=max(1, len(batch)))

    batcher = Batcher(infer, max_batch=limits.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPIOffline(title="gencls", version=__import__("gencls").__version__, lifespan=lifespan,
                         description=f"{run.method.name} trained on {run.config.dataset}: classify images, "
                                     "say whether they look like the training data, generate images.")
    app.state.batcher, app.state.run = batcher, run

    class TopK(BaseModel):
        class_: str = Field(alias="class")
        probability: float

    class ImagePrediction(BaseModel):
        filename: str
        class_: str = Field(alias="class")
        probability: float
        top_k: list[TopK]
        ood_score: float = Field(description="how much the image looks like the training data (higher = more alike)")
        ood_flag: bool | None = Field(description="true: unlike the training data (score below the calibrated "
                                                  "threshold); null: no threshold (the run was not calibrated)")

    class PredictResponse(BaseModel):
        predictions: list[ImagePrediction]
        ood_threshold: float | None
        ood_score_name: str

    class GenerateRequest(BaseModel):
        class_: str | None = Field(None, alias="class", description="a class name; omitted: any class",
                                   examples=[run.classes[0]])
        n: int = Field(8, ge=1, le=limits.max_generate)
        seed: int | None = Field(None, ge=0, lt=2**63, description="same seed, same images")
        nrow: int | None = Field(None, ge=1, le=100, description="images per row (default: all in one row)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health", summary="liveness, with batching counters")
    async def health():
        return {"status": "ok", "inference": dict(batcher.stats)}

    @app.get("/model", summary="what is being served")
    async def model():
        return info

    @app.post("/predict", response_model=PredictResponse, response_model_by_alias=True,
              summary="classify images; each gets top-k probabilities and an out-of-distribution score and flag",
              responses={413: {"description": "too many bytes, images or pixels"},
                         415: {"description": "a file that is not a readable image"}})
    async def predict(files: list[UploadFile] = File(..., description="one or more image files"),
                      top_k: int = Query(3, ge=1, le=len(run.classes)),
                      invert: Literal["auto", "yes", "no"] = Query(
                          "auto", description="invert light-background images to match the training data")):
        if len(files) > limits.max_images:
            raise HTTPException(413, f"{len(files)} images in one request; the limit is {limits.max_images}")
        blobs = [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]

        def decode_all():
            return np.stack([decode_image(b, run.image_shape, invert=invert, background=run.background,
                                          max_pixels=limits.max_pixels, name=name) for name, b in blobs])
        try:
            x = await run_in_threadpool(decode_all)
        except TooManyPixels as e:
            raise HTTPException(413, str(e)) from None
        except InputError as e:
            raise HTTPException(415, str(e)) from None
        probs, scores = await batcher.submit(x)
        rows = describe(run, probs, scores, top_k)
        return {"predictions": [{"filename": name, **row} for (name, _), row in zip(blobs, rows)],
                "ood_threshold": run.ood["threshold"], "ood_score_name": run.ood["score"]}

    @app.post("/generate", summary="a PNG grid of generated images, optionally of one class",
              response_class=Response,
              responses={200: {"content": {"image/png": {}}}, 400: {"description": "the method cannot generate"},
                         422: {"description": "unknown class, or no sample of it found"}})
    async def generate(req: GenerateRequest = Body(...)):
        if not run.method.can_generate:
            raise HTTPException(400, f"method {run.method.name} cannot generate images (it has no generator)")

        def work():
            if req.class_ is None:
                from gencls.api import generate as gen_any
                return gen_any(run, n=req.n, seed=req.seed), {"class": "", "how": "any class", "drawn": req.n,
                                                              "kept": req.n}
            return generate_class(run, req.class_, n=req.n, seed=req.seed)
        try:
            images, how = await batcher.call(work)
        except CannotGenerate as e:
            raise HTTPException(400, str(e)) from None
        except GenclsError as e:
            raise HTTPException(422, str(e)) from None
        if len(images) == 0:
            raise HTTPException(422, f"the generator drew {how['drawn']} images and the classifier assigned none "
                                     f"of them to class {how['class']}")
        png = png_grid(images.numpy(), nrow=req.nrow or len(images))
        return Response(png, media_type="image/png", headers={
            "X-Gencls-Class": how["class"].encode("ascii", "replace").decode(), "X-Gencls-How": how["how"],
            "X-Gencls-Drawn": str(how["drawn"]), "X-Gencls-Kept": str(how["kept"])})

    @app.exception_handler(GenclsError)
    async def gencls_error(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return BodyLimit(app, limits.max_upload_bytes) if limits.max_upload_bytes else app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None,
          threads: int | None = None, device: str = "cpu", log_level: str = "info") -> None:
    """Load a run and serve it until interrupted (loopback only unless ``host`` says otherwise)."""
    import torch
    import uvicorn

    from gencls.api import load_run

    if threads:
        torch.set_num_threads(threads)
    if not isinstance(run, (str, Path)):
        loaded = run
    else:
        loaded = load_run(run, device=device)
    app = create_app(loaded, limits)
    if not is_loopback(host):
        sys.stderr.write(f"gencls: warning: serving on {host}, reachable from other machines\n")
    print(f"serving {loaded.path} ({loaded.method.name}) on http://{host}:{port}/  (API docs at /docs)", flush=True)
    uvicorn.Server(server_config(app, host, port, limits or ServerLimits(), log_level)).run()


def server_config(app, host: str, port: int, limits: ServerLimits, log_level: str = "info"):
    """uvicorn's settings for ``app``: connections beyond ``limits.max_connections`` get 503, so
    uploads held in memory at once stay under max_connections x max_upload_bytes."""
    import uvicorn

    # uvicorn counts the connection being answered among the open ones (at its limit L it answers
    # 503 once L connections are open, this one included: L - 1 others), so L is the limit + 1
    limit = None if limits.max_connections is None else limits.max_connections + 1  # None: no limit
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=limit)
