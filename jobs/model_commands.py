"""``streamscore models``: list the repository, promote a default version, add your own ONNX model, make an INT8
version of one.

example: streamscore models list
example: streamscore models promote efficientnet-lite0:2
example: streamscore models add resnet18 resnet18.onnx --preset imagenet --labels imagenet_labels.txt
example: streamscore models add clip-vision:1 vision.onnx --preset imagenet --task embedding --l2-normalize
example: streamscore models quantize efficientnet-lite0:1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from common.errors import ConfigError, StreamScoreError
from jobs import console
from jobs.exit_codes import ExitCode
from operators.resize import Interpolation

if TYPE_CHECKING:
    from pipeline.models.ref import ModelRef
    from pipeline.models.repository import ModelVersion

_FORMAT = argparse.RawDescriptionHelpFormatter
_PROMOTE_HELP = "make the new version the model's default (without it, NAME keeps meaning what it meant)"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW or one number, got {text!r}")
    return int(parts[0]), int(parts[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.models.add import PRESETS

    commands = parser.add_subparsers(dest="models_command", required=True)
    listing = commands.add_parser(
        "list",
        help="list models and versions",
        epilog="example: streamscore models list --models-dir models",
        formatter_class=_FORMAT,
    )
    console.add_models_dir(listing)
    listing.set_defaults(models_handler=_list)

    promote = commands.add_parser(
        "promote",
        help="make a version what NAME means (score, nightly, serve)",
        formatter_class=_FORMAT,
        description="Set NAME's default version, after checking that it loads. NAME without a version means the "
        "default for every command and the Serve app (at deploy); with none promoted, the highest numeric version. "
        "The pointer is written atomically, on any filesystem the repository is on.",
        epilog="example: streamscore models promote efficientnet-lite0:2",
    )
    promote.add_argument("model", metavar="NAME:VERSION", help="the version to make the default")
    console.add_models_dir(promote)
    promote.set_defaults(models_handler=_promote)

    presets = "\n".join(f"  {name}: {preset.description}" for name, preset in PRESETS.items())
    add = commands.add_parser(
        "add",
        help="add an ONNX model as a new, checked version",
        formatter_class=_FORMAT,
        description="Inspect an ONNX graph, build its manifest from a preprocessing preset (every field can be "
        "overridden), write the version, then load it and score a warm-up image.\n\npresets:\n" + presets,
        epilog="example: streamscore models add resnet18 resnet18.onnx --preset imagenet --labels labels.txt",
    )
    add.add_argument("model", metavar="NAME[:VERSION]", help="the model and version to add (default version: next)")
    add.add_argument("onnx", type=Path, metavar="PATH.onnx")
    add.add_argument("--preset", required=True, choices=sorted(PRESETS), help="preprocessing convention")
    add.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line (default: class indices)")
    add.add_argument("--task", choices=["classification", "embedding"], default="classification")
    add.add_argument("--input", dest="input_name", help="the image input (default: the graph's one input)")
    add.add_argument("--output", dest="output_name", help="the output to report (default: the first)")
    add.add_argument("--layout", choices=["NCHW", "NHWC"], help="default: from the input's shape")
    add.add_argument("--size", type=_size, metavar="HxW", help="input size, for graphs with a symbolic one")
    add.add_argument("--color", choices=["RGB", "L"], help="default: from the input's channels")
    add.add_argument("--resize-shorter", type=int, help="shorter side before the centre crop (default: preset)")
    add.add_argument("--interpolation", choices=get_args(Interpolation), help="resize filter (default: preset)")
    add.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean, pixel units 0-255")
    add.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std, pixel units 0-255")
    add.add_argument(
        "--output-kind", choices=["logits", "probabilities"], help="default: probabilities after a Softmax"
    )
    add.add_argument("--l2-normalize", action="store_true", help="embeddings: scale each vector to unit length")
    add.add_argument("--source", default="", help="where the model came from, for the manifest")
    add.add_argument("--promote", action="store_true", help=_PROMOTE_HELP)
    console.add_models_dir(add)
    add.set_defaults(models_handler=_add)

    quantize = commands.add_parser(
        "quantize",
        help="write a static INT8 version of a model and report its speed and agreement",
        formatter_class=_FORMAT,
        description="Static QDQ quantization (per-channel weights rounded by GPTQ, float outputs) with ONNX Runtime, "
        "calibrated on images run through the model's own preprocessing. Scores held-out images (--evaluate) with "
        "both versions in one run: size, images/s, top-1 agreement and top-5 hits; a version agreeing less than "
        "--min-agreement is not written.",
        epilog="example: streamscore models quantize efficientnet-lite0:1 --calibration my_photos --images 200",
    )
    quantize.add_argument(
        "model", metavar="NAME:VERSION", help="the fp32 version to quantize (NAME: its default version)"
    )
    quantize.add_argument(
        "--calibration",
        type=Path,
        action="append",
        metavar="DIR",
        help="images to calibrate on (repeatable; default: the bundled calibration images)",
    )
    quantize.add_argument("--images", type=int, default=None, help="calibration images to use (default: all found)")
    quantize.add_argument(
        "--evaluate",
        type=Path,
        action="append",
        metavar="DIR",
        help="held-out images to compare both versions on; calibration images among them are left out (default: "
        "the calibration images, a weaker check)",
    )
    quantize.add_argument(
        "--min-agreement",
        type=float,
        metavar="F",
        help="refuse (write nothing, exit 1) below this top-1 agreement, or lowest cosine for embeddings "
        "(default: pipeline.models.quantize's, shown on the report's check line)",
    )
    quantize.add_argument(
        "--force", action="store_true", help="keep the version even under --min-agreement (with a warning)"
    )
    quantize.add_argument("--version", dest="new_version", help="version to write (default: next)")
    quantize.add_argument("--promote", action="store_true", help=_PROMOTE_HELP)
    console.add_models_dir(quantize)
    quantize.set_defaults(models_handler=_quantize)
    web = commands.add_parser(
        "export-web",
        help="write a static web page that classifies images in the browser (onnxruntime-web)",
        formatter_class=_FORMAT,
        description="The version's model.onnx, onnxruntime-web's WebAssembly files (copied from the pinned npm "
        "package, so the page fetches nothing from another origin), and an index.html where a person drops images "
        "and sees the top-5 of each; scripts call window.streamscore.classify(url). Preprocessing runs in the page "
        "exactly as the manifest says (Pillow's resampling). Serve the folder over HTTP, e.g. python -m http.server.",
        epilog="example: streamscore models export-web efficientnet-lite0 site/ && python -m http.server -d site",
    )
    web.add_argument("model", metavar="NAME[:VERSION]")
    web.add_argument("directory", type=Path, metavar="DIR")
    web.add_argument(
        "--ort-web-dist",
        type=Path,
        help=f"onnxruntime-web's dist/ folder (default: ${ORT_WEB_ENV}, else web/node_modules from `npm ci` in web/)",
    )
    web.set_defaults(models_handler=_export_web)


def run(args: argparse.Namespace) -> int:
    return int(args.models_handler(args))


def _list(args: argparse.Namespace) -> int:
    from pipeline.models.repository import ModelRepository

    root = console.models_dir(args)
    repository = ModelRepository(root)
    names = repository.names()
    if not names:
        print(f"no models in {root}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"models in {root} (*: the default version, what NAME means):")
    for name in names:
        versions = repository.versions(name)
        try:
            default: str | None = repository.resolve_version(name, None)
            why = "promoted" if repository.default_version(name) else "none promoted: the highest numeric version"
        except StreamScoreError as exc:  # several named versions and none promoted, or a damaged pointer
            default, why = None, f"no default: {exc}"
        marked = ", ".join(f"{v}*" if v == default else v for v in versions)
        print(f"  {name}: versions {marked} ({why})")
    return ExitCode.OK


def _promote(args: argparse.Namespace) -> int:
    from pipeline.models.ref import ModelRef
    from pipeline.models.repository import ModelRepository

    root = console.models_dir(args)
    ref = ModelRef.parse(args.model)
    repository = ModelRepository(root)
    try:
        before: str | None = repository.resolve_version(ref.name, None)
    except StreamScoreError:
        before = None  # no such model (promote says so below), no default, or a damaged pointer it replaces
    model = repository.promote(ref)
    print(f"{model.name} now means {model.name}:{model.version}" + (f" (was {before})" if before else ""))
    return ExitCode.OK


def _local_root(args: argparse.Namespace) -> Path:
    root = console.models_dir(args)
    if "://" in root:
        raise ConfigError(f"models add and quantize write a local repository; {root} is a URI (copy the version there)")
    return Path(root)


def _add(args: argparse.Namespace) -> int:
    from pipeline.models.add import AddRequest, add_model
    from pipeline.models.ref import ModelRef

    height, width = args.size if args.size else (None, None)
    request = AddRequest(
        preset=args.preset,
        task=args.task,
        input_name=args.input_name,
        output_name=args.output_name,
        layout=args.layout,
        height=height,
        width=width,
        color=args.color,
        resize_shorter=args.resize_shorter,
        interpolation=args.interpolation,
        mean=args.mean,
        std=args.std,
        output_kind=args.output_kind,
        l2_normalize=args.l2_normalize,
        source=args.source,
    )
    root = _local_root(args)
    model = add_model(root, ModelRef.parse(args.model), args.onnx, request, args.labels, promote=args.promote)
    print(f"added {model.name}:{model.version} to {root}" + (" as its default" if args.promote else ""))
    print(describe(model))
    return 0


def describe(model: ModelVersion) -> str:
    """The manifest in four lines, as a person checks it."""
    m = model.manifest
    i, p, o = m.input, m.preprocess, m.output
    batch = f"batch fixed at {i.batch}" if i.batch else "dynamic batch"
    answer = (
        f"{o.width}-d embedding{' (L2-normalised)' if o.l2_normalize else ''}"
        if m.task == "embedding"
        else f"{len(model.labels)} classes ({o.kind})"
    )
    return "\n".join(
        [
            f"  input   {i.name!r}: {i.layout} {i.color} {i.height}x{i.width} float32, {batch}",
            f"  resize  shorter side {p.resize_shorter} ({p.interpolation}), centre crop {i.height}x{i.width}",
            f"  scale   (x - {list(p.mean)}) / {list(p.std)}",
            f"  output  {o.name!r}: {answer}",
        ]
    )


ORT_WEB_ENV = "STREAMSCORE_ORT_WEB_DIST"


def _export_web(args: argparse.Namespace) -> int:
    from pipeline.models.ref import ModelRef
    from pipeline.models.web_export import default_runtime_dist, export_web

    dist = args.ort_web_dist or (
        Path(os.environ[ORT_WEB_ENV]) if os.environ.get(ORT_WEB_ENV) else default_runtime_dist()
    )
    written = export_web(str(_local_root(args)), ModelRef.parse(args.model), args.directory, dist)
    sizes = written["files"]
    assert isinstance(sizes, dict)
    print(f"wrote {written['model']} with onnxruntime-web {written['onnxruntime_web']} to {args.directory}")
    for name, size in sizes.items():
        print(f"  {name:<32} {size / 1e6:7.2f} MB")
    print(f"  {'total':<32} {sum(sizes.values()) / 1e6:7.2f} MB")
    print(f"serve it over HTTP, e.g.: python -m http.server -d {args.directory}")
    return ExitCode.OK


def _quantize(args: argparse.Namespace) -> int:
    from pipeline.models.quantize import AgreementTooLowError, quantize_model
    from pipeline.models.ref import ModelRef

    root = _local_root(args)
    ref = ModelRef.parse(args.model)
    try:
        report = quantize_model(
            root,
            ref,
            calibration=args.calibration or [default_calibration(root, ref)],
            max_images=args.images,
            evaluation=args.evaluate,
            new_version=args.new_version,
            promote=args.promote,
            force=args.force,
            **({} if args.min_agreement is None else {"min_agreement": args.min_agreement}),
        )
    except AgreementTooLowError as exc:  # it ran, but what it asked for (a faithful INT8 version) did not happen
        print(f"streamscore: refused: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(report.render())
    return ExitCode.OK


DEMO_IMAGES = Path(__file__).resolve().parent / "demo_images"


def default_calibration(root: Path, ref: ModelRef) -> Path:
    """A version's own ``calibration/`` folder when it ships one (the digits model does), else the demo photos."""
    from pipeline.models.repository import ModelRepository

    version = ModelRepository(str(root)).resolve_version(ref.name, ref.version)
    own = root / ref.name / version / "calibration"
    return own if own.is_dir() else DEMO_IMAGES
