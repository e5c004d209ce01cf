"""The serving peer: the FastAPI + ONNX Runtime app a user would write instead of StreamScore's Serve app.

    STREAMSCORE_PEER_MODEL_DIR=models/efficientnet-lite0/1 \
        uvicorn benchmarks.serving_peer:app --workers 2 --port 8000

One ONNX Runtime session per process (uvicorn's workers are processes), Pillow preprocessing from the model's
manifest (resize the shorter side, centre crop, ``(x - mean) / std``), the request body a raw image, the
answer the top-5 labels as JSON. The endpoint reads the body on the event loop and runs the work in
Starlette's thread pool, where decoding and inference release the GIL, as a user's first version would. It
has none of StreamScore's guarantees (no body limits, no decode-bomb limits, no version routing, no
batching); it is the speed to beat.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from benchmarks.scenarios import _preprocess, _preprocess_params, _session

MODEL_DIR = os.environ.get("STREAMSCORE_PEER_MODEL_DIR", "models/efficientnet-lite0/1")
THREADS = int(os.environ.get("STREAMSCORE_PEER_THREADS", "1"))  # per worker process; 2 workers on 2 cores

app = FastAPI()
_params = _preprocess_params(MODEL_DIR)
_session_ = _session(MODEL_DIR, THREADS)
_input = _session_.get_inputs()[0].name
_labels = (Path(MODEL_DIR) / "labels.txt").read_text().splitlines()


@app.post("/predict/{model}")
async def predict_image(model: str, request: Request) -> JSONResponse:
    """Read the body on the event loop, decode and score in Starlette's thread pool."""
    from starlette.concurrency import run_in_threadpool

    data = await request.body()
    try:
        return JSONResponse(await run_in_threadpool(score_image, data))
    except (OSError, ValueError) as exc:  # Pillow's "cannot identify image file", truncated data
        return JSONResponse({"error": str(exc)}, status_code=400)


def score_image(data: bytes) -> dict:
    """One encoded image -> its top-5 answer: what each request runs, in a worker thread."""
    with Image.open(io.BytesIO(data)) as image:
        x = _preprocess(image.convert("RGB"), _params)
    logits = _session_.run(None, {_input: x[None]})[0][0]
    e = np.exp(logits - logits.max())
    probabilities = e / e.sum()
    top = np.argsort(probabilities)[::-1][:5]
    return {
        "label": _labels[top[0]],
        "score": float(probabilities[top[0]]),
        "top_k": [{"label": _labels[i], "score": float(probabilities[i])} for i in top],
    }
