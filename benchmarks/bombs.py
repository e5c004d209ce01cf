"""What hostile images cost a batch job: wall time, and the peak memory of the tree and of its largest process.

    python -m benchmarks.bombs --json bench/bombs.json

Each case is a folder of 32 files (one batch) scored by ``streamscore score`` in a fresh subprocess, measured
from outside (``benchmarks/measure.py``): photos (the baseline: Ray and the model), PNGs just under the
50-megapixel limit (a batch of full-size images), aspect-ratio strips (85-byte 4000x1 and 20000x300 PNGs) and
pixel bombs (PNGs that declare 20000x20000 and are refused before decoding).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.measure import REPO, measure

BENCH = REPO / "bench"
FILES_PER_CASE = 32


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares a huge canvas (a decompression bomb's calling card)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _cases() -> dict[str, list[bytes]]:
    from skimage import data

    ramp = np.linspace(0, 255, 7000, dtype=np.uint8)
    near_limit = np.stack([np.broadcast_to(ramp, (7000, 7000))] * 3, axis=-1)  # 49 MP, smooth: a small file
    strip = np.full((1, 4000, 3), 200, dtype=np.uint8)
    panorama = np.tile(data.coffee()[:300], (1, 34, 1))[:, :20000]
    photos = [_png(getattr(data, n)()) for n in ("coffee", "chelsea", "astronaut", "rocket")]
    return {
        "photos": [photos[i % 4] for i in range(FILES_PER_CASE)],
        "near_limit_pngs": [_png(near_limit)] * FILES_PER_CASE,
        "aspect_strips": [_png(strip), _png(panorama)] * (FILES_PER_CASE // 2),
        "pixel_bombs": [png_with_declared_size(20000, 20000)] * FILES_PER_CASE,
    }


def run_case(name: str, files: list[bytes], model: str, timeout_s: float) -> dict[str, Any]:
    folder, out = BENCH / "bombs" / name, BENCH / "bombs-out" / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, data in enumerate(files):
        (folder / f"{i:03d}.png").write_bytes(data)
    summary = out.with_suffix(".summary.json")
    command = [sys.executable, "-m", "jobs.cli", "score", str(folder), str(out), "--model", model, "--quiet"]
    log = BENCH / "logs" / f"bombs-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    measured = measure([*command, "--summary-json", str(summary)], log, timeout_s)
    if summary.exists():
        scored = json.loads(summary.read_text())
        measured |= {"rows": scored["rows"], "errors_by_reason": scored["errors_by_reason"]}
    return {"file_bytes": sum(len(f) for f in files)} | measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cases = _cases()
    only = [c for c in args.only.split(",") if c] or list(cases)
    report = {name: run_case(name, cases[name], args.model, args.timeout_s) for name in only}
    for name, figures in report.items():
        print(
            f"{name:16s} {figures['file_bytes'] / 2**20:8.1f} MB in  {figures['wall_s']:6.1f} s  "
            f"tree {figures['peak_rss_mb']:7.0f} MB  largest process {figures['peak_process_rss_mb']:6.0f} MB  "
            f"{figures.get('errors_by_reason', figures.get('error'))}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
