"""The tools a user would pick instead of StreamScore, run on the same images and model in the same benchmark.

- ``daft``: Daft's documented batch-inference pipeline on its native runner (one process, Rust I/O and decode,
  Python UDFs): ``from_glob_path`` -> ``download`` -> ``decode_image`` -> resize the shorter side + centre
  crop (a row function: Daft's own ``resize`` takes one fixed size, which would squash the aspect ratio) -> a
  batch UDF class holding the ONNX Runtime session -> Parquet. Install it with ``pip install daft`` (the
  ``peers`` extra). Daft has no per-row errors: ``decode_image(on_error="null")`` turns an undecodable file
  into a null, which the UDF must skip (with ``"raise"``, Daft's default, one bad file fails the run).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.scenarios import _preprocess_params, _session


def run_daft(cfg: dict[str, Any]) -> dict[str, Any]:
    import daft
    import numpy as np
    from daft import col
    from daft.functions import decode_image, download
    from PIL import Image

    start = time.perf_counter()
    daft.set_runner_native()
    p = _preprocess_params(cfg["model_dir"])
    size = (p["width"], p["height"])
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}.get(
        p["interpolation"], Image.Resampling.BILINEAR
    )

    @daft.func(return_dtype=daft.DataType.tensor(daft.DataType.uint8(), (p["height"], p["width"], 3)))
    def resize_and_crop(image: np.ndarray | None) -> np.ndarray | None:
        if image is None:
            return None
        picture = Image.fromarray(image)
        w, h = picture.size
        scale = p["resize"] / min(w, h)
        w, h = max(size[0], round(w * scale)), max(size[1], round(h * scale))
        picture = picture.resize((w, h), resample)
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        return np.asarray(picture.crop((left, top, left + size[0], top + size[1])))

    threads = os.cpu_count() or 1
    model_dir = cfg["model_dir"]

    @daft.cls
    class Classifier:
        def __init__(self) -> None:
            self.session = _session(model_dir, threads)
            self.input = self.session.get_inputs()[0].name
            self.mean = np.asarray(p["mean"], np.float32)
            self.std = np.asarray(p["std"], np.float32)

        @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=32)
        def __call__(self, pixels: daft.Series) -> list[int | None]:
            rows = pixels.to_pylist()
            ok = [i for i, r in enumerate(rows) if r is not None]
            labels: list[int | None] = [None] * len(rows)
            if ok:
                x = (np.stack([rows[i] for i in ok]).astype(np.float32) - self.mean) / self.std
                logits = self.session.run(None, {self.input: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
                for i, label in zip(ok, logits.argmax(1).tolist(), strict=True):
                    labels[i] = int(label)
            return labels

    df = daft.from_glob_path(os.path.join(cfg["images_dir"], "*.jpg"))
    df = df.with_column("image", decode_image(download(col("path")), on_error="null", mode="RGB"))
    df = df.with_column("pixels", resize_and_crop(col("image")))
    df = df.with_column("label", Classifier()(col("pixels")))  # type: ignore[arg-type]  # daft.cls rewrites it
    df.select("path", "label").write_parquet(cfg["out_dir"])
    end = time.perf_counter()
    scored = daft.read_parquet(cfg["out_dir"]).where(col("label").not_null()).count_rows()
    return {"work_s": end - start, "images": scored}
