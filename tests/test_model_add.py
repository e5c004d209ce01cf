"""``streamscore models add``: graphs built here with ``onnx`` (layouts, fixed and dynamic batch, external data,
hostile external-data paths) and the bundled models re-added from their own .onnx files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.errors import ConfigError, ModelLoadError
from pipeline.graph import graph_for_model
from pipeline.models.add import AddRequest, add_model
from pipeline.models.manifest import ModelManifest
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.options import ScoringOptions
from tests.conftest import MODELS_DIR, REPO

RNG = np.random.default_rng(0)
CLASSES = 5


def _classifier(
    path: Path,
    layout: str = "NCHW",
    batch: int | str = "N",
    size: int = 16,
    channels: int = 3,
    softmax: bool = False,
    external: bool = False,
    input_type: int = TensorProto.FLOAT,
    extra_input: bool = False,
) -> Path:
    """A real small CNN: Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm (-> Softmax); the same weights
    every time (for the same channels), so two layouts or batch axes of one network can be compared."""
    rng = np.random.default_rng(1)
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    nodes, x = [], "image"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["image_f"], to=TensorProto.FLOAT))
        x = "image_f"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, channels, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.2, (CLASSES, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("Conv", [x, "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    output = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        output = "probabilities"
    inputs = [helper.make_tensor_value_info("image", input_type, shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1]))
        nodes.append(helper.make_node("Identity", ["mask"], ["mask_out"]))
    outputs = [
        helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, CLASSES]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8]),
    ]
    if extra_input:
        outputs.append(helper.make_tensor_value_info("mask_out", TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(nodes, "test", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _labels(tmp_path: Path, n: int = CLASSES) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(f"class {i}" for i in range(n)) + "\n")
    return path


def _images(n: int, size: int = 40) -> list[bytes]:
    from tests.conftest import encode

    return [encode(RNG.integers(0, 256, (size + i, size + 2 * i, 3), dtype=np.uint8), "PNG") for i in range(n)]


def _scores(repository: ModelRepository, ref: str, images: list[bytes]) -> np.ndarray:
    table = graph_for_model(repository.load(ref), ScoringOptions(top_k=CLASSES)).run(images)
    assert table.column("error").null_count == len(images)
    return np.array(
        [[t["score"] for t in sorted(row, key=lambda t: t["label"])] for row in table.column("top_k").to_pylist()]
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layouts_and_fixed_or_dynamic_batch_are_read_from_the_graph(tmp_path: Path, layout: str) -> None:
    dynamic = _classifier(tmp_path / f"{layout}_dynamic.onnx", layout)
    fixed = _classifier(tmp_path / f"{layout}_fixed.onnx", layout, batch=1)
    root = tmp_path / "repo"
    request = AddRequest(preset="imagenet")
    a = add_model(root, ModelRef(name="net"), dynamic, request, _labels(tmp_path))
    b = add_model(root, ModelRef(name="net"), fixed, request, _labels(tmp_path))
    assert (a.version, b.version) == ("1", "2")  # the next version each time
    for model, batch in ((a, None), (b, 1)):
        spec = model.manifest
        assert (spec.input.layout, spec.input.height, spec.input.color, spec.input.batch) == (layout, 16, "RGB", batch)
        assert spec.preprocess.resize_shorter == 18  # round(16 / 0.875): the ImageNet eval crop
        np.testing.assert_allclose(spec.preprocess.mean, (123.675, 116.28, 103.53))
        assert model.labels == tuple(f"class {i}" for i in range(CLASSES)) and spec.output.kind == "logits"
    # Three images through the batch-1 graph (three calls) score as through the dynamic one (one call).
    repository = ModelRepository(str(root))
    images = _images(3)
    np.testing.assert_allclose(_scores(repository, "net:2", images), _scores(repository, "net:1", images), atol=1e-6)


def test_grey_softmax_and_embedding_graphs(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    grey = add_model(
        root,
        ModelRef(name="grey"),
        _classifier(tmp_path / "g.onnx", channels=1, softmax=True),
        AddRequest(preset="inception"),
    )
    assert (grey.manifest.input.color, grey.manifest.output.kind) == ("L", "probabilities")
    assert grey.manifest.preprocess.mean == (127.5,) and grey.labels == tuple(str(i) for i in range(CLASSES))
    embed = add_model(
        root,
        ModelRef(name="feat", version="7"),
        _classifier(tmp_path / "e.onnx"),
        AddRequest(preset="raw", task="embedding", output_name="features", l2_normalize=True),
    )
    assert (embed.version, embed.manifest.output.width, embed.labels) == ("7", 8, ())
    table = graph_for_model(embed, ScoringOptions()).run(_images(2))
    vectors = np.array(table.column("embedding").to_pylist())
    assert vectors.shape == (2, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_external_data_is_copied_and_loads(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    path = _classifier(source / "model.onnx", external=True)
    assert (source / "weights.bin").stat().st_size > 0
    model = add_model(tmp_path / "repo", ModelRef(name="ext"), path, AddRequest(preset="imagenet"))
    folder = Path(model.model_uri).parent
    assert (folder / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()
    (source / "weights.bin").unlink()  # the version reads its own copy, not the file it came from
    assert _scores(ModelRepository(str(tmp_path / "repo")), "ext", _images(2)).shape == (2, CLASSES)


def _point_external_data_at(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_leaving_the_folder_is_refused(tmp_path: Path, where: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    path = _classifier(source / "model.onnx", external=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((source / "weights.bin").read_bytes())  # a readable file outside the model's folder
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[where]
    if where == "symlink":
        os.symlink(secret, source / "link.bin")
    _point_external_data_at(path, location)
    with pytest.raises(ModelLoadError, match="relative path" if where == "absolute" else "outside the model's folder"):
        add_model(tmp_path / "repo", ModelRef(name="evil"), path, AddRequest(preset="imagenet"))
    assert not (tmp_path / "repo" / "evil").exists()  # nothing half-written


def test_a_hand_written_version_with_escaping_external_data_does_not_load(tmp_path: Path) -> None:
    folder = tmp_path / "repo" / "evil" / "1"
    added = add_model(
        tmp_path / "repo",
        ModelRef(name="evil"),
        _classifier(tmp_path / "m.onnx", external=True),
        AddRequest(preset="imagenet"),
    )
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    _point_external_data_at(Path(added.model_uri), "../../../outside.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        ModelRepository(str(tmp_path / "repo")).load("evil:1")


@pytest.mark.parametrize(
    ("graph", "labels", "message"),
    [
        ({"extra_input": True}, None, r"2 inputs \['image', 'mask'\]; StreamScore feeds one image input"),
        ({"input_type": TensorProto.INT64}, None, "input 'image' is tensor\\(int64\\); StreamScore feeds float32"),
        ({"channels": 4}, None, "cannot tell the layout"),
        ({}, 3, "gives 5 values per image but the labels file has 3 labels"),
    ],
)
def test_graphs_it_cannot_serve_are_refused_by_name(
    tmp_path: Path, graph: dict, labels: int | None, message: str
) -> None:
    path = _classifier(tmp_path / "m.onnx", **graph)
    labels_path = _labels(tmp_path, labels) if labels else None
    with pytest.raises(ModelLoadError, match=message):
        add_model(tmp_path / "repo", ModelRef(name="bad"), path, AddRequest(preset="imagenet"), labels_path)
    assert not (tmp_path / "repo" / "bad").exists()


def test_a_graph_without_an_image_shaped_input_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
    )
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ModelLoadError, match=r"shape \[\?, 10\]: an image batch has 4 axes"):
        add_model(tmp_path / "repo", ModelRef(name="flat"), path, AddRequest(preset="raw"))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        add_model(tmp_path / "repo", ModelRef(name="junk"), tmp_path / "junk.onnx", AddRequest(preset="raw"))


def test_versions_are_immutable_and_presets_checked(tmp_path: Path) -> None:
    path = _classifier(tmp_path / "m.onnx")
    add_model(tmp_path / "repo", ModelRef(name="net", version="1"), path, AddRequest(preset="raw"))
    with pytest.raises(ConfigError, match="net:1 exists"):
        add_model(tmp_path / "repo", ModelRef(name="net", version="1"), path, AddRequest(preset="raw"))
    with pytest.raises(ConfigError, match="unknown preset 'caffe'; presets: imagenet, inception, unit, raw"):
        add_model(tmp_path / "repo", ModelRef(name="net"), path, AddRequest(preset="caffe"))


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        (
            "efficientnet-lite0",
            ["--preset", "inception", "--mean", "127", "--std", "128", "--interpolation", "bicubic"],
        ),
        ("digits", ["--preset", "unit", "--interpolation", "area"]),
        (
            "efficientnet-lite0-embed",
            [
                "--preset",
                "inception",
                "--mean",
                "127",
                "--std",
                "128",
                "--interpolation",
                "bicubic",
                "--task",
                "embedding",
                "--l2-normalize",
            ],
        ),
    ],
)
def test_bundled_models_re_added_from_their_onnx_files_match_what_ships(
    tmp_path: Path, name: str, flags: list[str], photo_jpegs
) -> None:  # type: ignore[no-untyped-def]
    shipped = MODELS_DIR / name / "1"
    labels = ["--labels", str(shipped / "labels.txt")] if (shipped / "labels.txt").exists() else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "models",
            "add",
            f"{name}:1",
            str(shipped / "model.onnx"),
            *flags,
            *labels,
            "--models-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"added {name}:1 to {tmp_path}" in done.stdout
    added = ModelManifest.model_validate_json((tmp_path / name / "1" / "manifest.json").read_text())
    expected = ModelManifest.model_validate_json((shipped / "manifest.json").read_text())
    assert added.model_copy(update={"source": ""}) == expected.model_copy(update={"source": ""})
    images = list(photo_jpegs.values())[:2]
    ours = graph_for_model(ModelRepository(str(tmp_path)).load(name), ScoringOptions()).run(images)
    theirs = graph_for_model(ModelRepository(str(MODELS_DIR)).load(name), ScoringOptions()).run(images)
    assert ours.drop(["model"]).equals(theirs.drop(["model"]))


def test_the_command_names_the_problem_and_exits_2(tmp_path: Path) -> None:
    path = _classifier(tmp_path / "m.onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "models",
            "add",
            "net",
            str(path),
            "--preset",
            "imagenet",
            "--labels",
            str(_labels(tmp_path, 7)),
            "--models-dir",
            str(tmp_path / "repo"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "output 'logits' gives 5 values per image but the labels file has 7 labels" in done.stderr
