"""``streamscore models export-web NAME[:VERSION] DIR``: the model as a static web page that classifies images in
the browser with onnxruntime-web (WebAssembly).

Why preprocessing in JavaScript, not folded into the graph: the page must answer what the batch job answers,
and the batch job's resize is Pillow's (a filter whose support widens with the downscale, fixed-point
rounding). ``web_page/streamscore.js`` does exactly that on the browser's decoded pixels, as the version's
manifest says; a graph ``Resize`` would be ONNX Runtime's own filter, another answer. Only the decoder is the
browser's. The runtime's files come from the pinned onnxruntime-web npm package (``web/package.json``) and are
copied beside the page, so the page fetches nothing from another origin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.errors import ConfigError
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository

PAGE = Path(__file__).with_name("web_page")
# From onnxruntime-web's dist/: the WebAssembly-only bundle (global ``ort``) and the SIMD build it loads.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TOP_K = 5


def default_runtime_dist() -> Path:
    """onnxruntime-web's dist/ as ``npm ci`` in ``web/`` installs it (the version package.json pins)."""
    return Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web" / "dist"


def export_web(repository_root: str, ref: ModelRef, target: Path, runtime_dist: Path) -> dict[str, object]:
    """Write the page for ``ref`` into ``target`` (made if missing; its files are replaced). Returns what was
    written: the version and each file's size."""
    model = ModelRepository(repository_root).load(ref)
    manifest = model.manifest
    if manifest.task != "classification":
        raise ConfigError(
            f"{model.name}:{model.version} is a {manifest.task} model; the page shows a classifier's top-5"
        )
    if manifest.preprocess.operators:
        raise ConfigError(
            f"{model.name}:{model.version} has its own preprocessing operators, which the page cannot run"
        )
    if "://" in model.model_uri:
        raise ConfigError("export-web reads a local repository; copy the version here first")
    missing = [name for name in RUNTIME_FILES if not (runtime_dist / name).is_file()]
    if missing:
        raise ConfigError(
            f"onnxruntime-web's {', '.join(missing)} not in {runtime_dist}: run `npm ci` in web/ (or give "
            "--ort-web-dist, an onnxruntime-web dist/ folder)"
        )
    version = json.loads((runtime_dist.parent / "package.json").read_text()).get("version", "unknown")
    (target / "ort").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model.model_uri, target / "model.onnx")
    for name in RUNTIME_FILES:
        shutil.copyfile(runtime_dist / name, target / "ort" / name)
    shutil.copyfile(PAGE / "streamscore.js", target / "streamscore.js")
    title = f"{model.name}:{model.version}"
    (target / "index.html").write_text((PAGE / "index.html").read_text().replace("MODEL_TITLE", title))
    spec = {
        "name": model.name,
        "version": model.version,
        "input": manifest.input.model_dump(mode="json"),
        "preprocess": manifest.preprocess.model_dump(mode="json"),
        "output": manifest.output.model_dump(mode="json"),
        "labels": list(model.labels),
        "top_k": min(TOP_K, len(model.labels)),
        "onnxruntime_web": version,
    }
    (target / "model.json").write_text(json.dumps(spec, indent=1) + "\n")
    sizes = {str(p.relative_to(target)): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
    return {"model": title, "onnxruntime_web": version, "files": sizes}
