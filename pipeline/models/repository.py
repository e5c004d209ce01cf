"""The model repository: ``<root>/<name>/<version>/{model.onnx, manifest.json, labels.txt}``, plus each model's
default version (``<root>/<name>/_default.json``, see ``pipeline/models/default_version.py``).

The root is a local folder or any pyarrow/fsspec URI. Loading a version validates its manifest and checks
the ONNX graph's input and output against it, so a mismatch fails the job before any image is read.
``NAME`` without a version means one thing for every command and the Serve app: ``resolve_version``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from pydantic import ValidationError

from common.errors import ConfigError, ModelLoadError, ModelNotFoundError
from common.filesystems import join, resolve
from pipeline.models.default_version import read_default, write_default
from pipeline.models.manifest import ModelManifest
from pipeline.models.ref import ModelRef, check_id

logger = logging.getLogger(__name__)

MODEL_FILE, MANIFEST_FILE = "model.onnx", "manifest.json"


def _version_key(version: str) -> tuple[int, int | str]:
    # Numeric versions sort numerically (10 after 9); others sort after them, by name.
    return (0, int(version)) if version.isdigit() else (1, version)


@dataclass(frozen=True)
class ModelVersion:
    """A loaded, checked model version: where its weights are and how to feed it."""

    manifest: ModelManifest
    labels: tuple[str, ...]
    model_uri: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def output_width(self) -> int:
        """Length of a row's output vector: the number of classes, or the embedding's width."""
        return self.manifest.output.width or len(self.labels)


class ModelRepository:
    """A model repository root: its versions (read-only) and each model's default version."""

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None, listing_ttl_s: float = 0.0) -> None:
        """``listing_ttl_s``: how long a folder's listing and a model's default are reused. The Serve gateway
        resolves a version for every request, and on an object store each listing is a request of its own; a
        version asked for by name that the reused listing lacks is looked for afresh, so a version just added
        is found at once."""
        self.root = root
        self._fs, self._root_path = resolve(root, filesystem)
        self._uri_root = root if "://" in root else self._root_path
        self._listing_ttl_s = listing_ttl_s
        self._listings: dict[str, tuple[float, list[str]]] = {}
        self._defaults: dict[str, tuple[float, str | None]] = {}

    def _children(self, path: str, fresh: bool = False) -> list[str]:
        listed = self._listings.get(path)
        if listed is not None and not fresh and time.monotonic() - listed[0] < self._listing_ttl_s:
            return listed[1]
        selector = pafs.FileSelector(path, allow_not_found=True)
        children = sorted(
            info.base_name
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and not info.base_name.startswith((".", "_"))
        )
        if self._listing_ttl_s:
            self._listings[path] = (time.monotonic(), children)
        return children

    def names(self) -> list[str]:
        return self._children(self._root_path)

    def versions(self, name: str, fresh: bool = False) -> list[str]:
        """Versions of ``name``, oldest first (numeric order where versions are numbers)."""
        check_id("name", name)
        versions = self._children(join(self._root_path, name), fresh)
        return sorted(versions, key=_version_key)

    def default_version(self, name: str, fresh: bool = False) -> str | None:
        """The version promoted as ``name``'s default, or None when none was."""
        check_id("name", name)
        cached = self._defaults.get(name)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self._listing_ttl_s:
            return cached[1]
        version = read_default(self._fs, join(self._root_path, name))
        if self._listing_ttl_s:
            self._defaults[name] = (time.monotonic(), version)
        return version

    def resolve_version(self, name: str, version: str | None) -> str:
        """``version`` if ``name`` has it; for None, what ``NAME`` means everywhere: its default version if one
        was promoted, else its highest numeric version, else its only version. Named versions (``exp``) are
        never chosen by their name's sort order: a model with only several named ones needs a default."""
        versions = self.versions(name)
        if self._listing_ttl_s and (not versions or (version is not None and version not in versions)):
            versions = self.versions(name, fresh=True)
        if not versions:
            raise ModelNotFoundError(
                f"no model {name!r} in repository {self.root!r}; models there: {', '.join(self.names()) or 'none'}"
            )
        if version is not None:
            check_id("version", version)
            if version not in versions:
                raise ModelNotFoundError(f"model {name!r} has no version {version!r}; versions: {', '.join(versions)}")
            return version
        default = self.default_version(name)
        if default is not None:
            if default not in versions and default not in self.versions(name, fresh=True):
                raise ModelNotFoundError(
                    f"{name!r}'s default version {default!r} is not in the repository (versions: "
                    f"{', '.join(versions)}); promote one: streamscore models promote {name}:VERSION"
                )
            return default
        numeric = [v for v in versions if v.isdigit()]
        if numeric:
            return numeric[-1]
        if len(versions) == 1:
            return versions[0]
        raise ModelNotFoundError(
            f"{name!r} has no default version and no numeric one to fall back on (versions: {', '.join(versions)}); "
            f"name one ({name}:VERSION) or promote one: streamscore models promote {name}:VERSION"
        )

    def promote(self, ref: ModelRef) -> ModelVersion:
        """Make ``ref`` (which must name a version) its model's default, after checking that it loads: from
        then on ``NAME`` means it for ``score``, ``nightly``, ``serve`` (at deploy) and the gateway."""
        if ref.version is None:
            raise ConfigError(f"promote names a version: {ref.name}:VERSION")
        model = self.load(ref)
        write_default(self._fs, join(self._root_path, ref.name), model.version)
        self._defaults.pop(ref.name, None)
        logger.info("promoted %s:%s to %s's default version", ref.name, model.version, ref.name)
        return model

    def pin_default(self, ref: ModelRef) -> bool:
        """Make ``ref`` the default only if the model has none (no load: it is what ``NAME`` already means);
        whether it was written. How ``add`` and ``quantize`` keep ``NAME``'s meaning while adding a version."""
        assert ref.version is not None
        self._defaults.pop(ref.name, None)
        return write_default(self._fs, join(self._root_path, ref.name), ref.version, replace=False)

    def _read_text(self, path: str) -> str:
        try:
            with self._fs.open_input_stream(path) as stream:
                return stream.read().decode("utf-8")
        except FileNotFoundError:
            raise ModelLoadError(f"missing file {path}") from None

    def load(self, ref: ModelRef | str, check_graph: bool = True) -> ModelVersion:
        """Load ``ref`` (``resolve_version``'s choice when it names no version): manifest, labels, and (by
        default) a check of the ONNX graph against them."""
        ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        version = self.resolve_version(ref.name, ref.version)
        return self.load_folder(
            join(self._root_path, f"{ref.name}/{version}"), ModelRef(name=ref.name, version=version), check_graph
        )

    def load_folder(self, folder: str, ref: ModelRef, check_graph: bool = True) -> ModelVersion:
        """Load the version in ``folder`` (a path on this repository's filesystem), which must say it is ``ref``:
        how a version being added is checked before it is renamed into place."""
        start = time.perf_counter()
        name, version = ref.name, ref.version
        try:
            manifest = ModelManifest.model_validate(json.loads(self._read_text(join(folder, MANIFEST_FILE))))
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"invalid manifest for {name}:{version}: {exc}") from exc
        if (manifest.name, manifest.version) != (name, version):
            raise ModelLoadError(
                f"manifest in {name}/{version} says {manifest.name}:{manifest.version}; fix the manifest or the folder"
            )
        labels: tuple[str, ...] = ()
        if manifest.labels_file:
            text = self._read_text(join(folder, manifest.labels_file))
            labels = tuple(line.strip() for line in text.splitlines() if line.strip())
        model_path = join(folder, MODEL_FILE)
        local = "://" not in self.root  # a local folder's path is its URI; a remote one keeps its scheme
        model = ModelVersion(
            manifest, labels, model_path if local else self._uri_root + model_path[len(self._root_path) :]
        )
        if check_graph:
            check_model_matches_manifest(model)
        logger.info("loaded model %s:%s in %.1f ms", name, version, (time.perf_counter() - start) * 1e3)
        return model


def check_model_matches_manifest(model: ModelVersion) -> None:
    """Open the ONNX graph (unoptimized: only its signature is needed) and compare it with the manifest."""
    import onnxruntime as ort

    from operators.infer import session_source

    source = session_source(model.model_uri)
    if isinstance(source, str):  # a local file: its external data must stay in its folder, checked before ORT reads it
        from pipeline.models._onnx_graph import external_data_files

        external_data_files(Path(source))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types for a bad file; all mean "cannot load"
        raise ModelLoadError(f"cannot open {model.model_uri}: {exc}") from exc
    spec, where = model.manifest.input, f"{model.name}:{model.version}"
    inputs = {i.name: i for i in session.get_inputs()}
    if spec.name not in inputs:
        raise ModelLoadError(f"{where}: manifest input {spec.name!r} is not in the ONNX graph; inputs: {list(inputs)}")
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{where}: the ONNX graph has {len(inputs)} inputs {list(inputs)}; one image input expected"
        )
    graph_input = inputs[spec.name]
    if graph_input.type != "tensor(float)":
        raise ModelLoadError(f"{where}: input {spec.name!r} is {graph_input.type}, manifest says float32")
    expected = (
        [spec.channels, spec.height, spec.width] if spec.layout == "NCHW" else [spec.height, spec.width, spec.channels]
    )
    shape = list(graph_input.shape)
    if len(shape) != 4:
        raise ModelLoadError(f"{where}: input {spec.name!r} has shape {shape}, expected 4 dimensions ({spec.layout})")
    for axis, (got, want) in enumerate(zip(shape[1:], expected, strict=True), start=1):
        if isinstance(got, int) and got != want:
            raise ModelLoadError(
                f"{where}: input {spec.name!r} has shape {shape} but the manifest ({spec.layout}, {spec.color}, "
                f"{spec.height}x{spec.width}) needs {want} at axis {axis}"
            )
    outputs = {o.name: o for o in session.get_outputs()}
    out_spec = model.manifest.output
    if out_spec.name not in outputs:
        raise ModelLoadError(
            f"{where}: manifest output {out_spec.name!r} is not in the ONNX graph; outputs: {list(outputs)}"
        )
    shape = list(outputs[out_spec.name].shape)
    width = math.prod(shape[1:]) if all(isinstance(d, int) for d in shape[1:]) else None
    if width is not None and width != model.output_width:
        raise ModelLoadError(
            f"{where}: output {out_spec.name!r} has {width} classes but labels file has {len(model.labels)}"
            if model.labels
            else f"{where}: output {out_spec.name!r} has {width} values per row but the manifest says width {model.output_width}"
        )


MODELS_DIR_ENV = "STREAMSCORE_MODELS_DIR"
# The repository's own models/ folder, when the package runs from a checkout (pip install -e .).
BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def find_models_dir(given: str | None, from_env: str | None, cwd: Path) -> str:
    """The model repository to use: ``--models-dir`` if given, else ``$STREAMSCORE_MODELS_DIR``, else
    ``./models`` where the command runs, else the models bundled with the checkout StreamScore was
    installed from. Entry points pass the environment in; library code never reads it.
    """
    for candidate in (given, from_env):
        if candidate:
            return candidate
    for folder in (cwd / "models", BUNDLED_MODELS_DIR):
        if folder.is_dir():
            return str(folder)
    raise ConfigError(
        f"no model repository found: no ./models here ({cwd}) and none bundled with StreamScore; "
        f"pass --models-dir DIR or set {MODELS_DIR_ENV}"
    )
