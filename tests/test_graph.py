"""The graph in-process: golden predictions on real photos, accuracy on held-out digits, build-time checks."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from common.errors import ConfigError, ContractError
from operators.base import Column, OperatorSpec
from pipeline.graph import SOURCE_SCHEMA, build_graph, check_contract
from pipeline.options import ScoringOptions


def test_golden_efficientnet_on_real_photos(repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    graph = build_graph("efficientnet-lite0", repository)
    table = graph.run([photo_jpegs["coffee"], photo_jpegs["chelsea"]], ["coffee", "chelsea"])
    coffee, chelsea = table.to_pylist()
    assert coffee["label"] == "espresso" and coffee["score"] > 0.8
    assert {"tabby", "tiger cat", "Egyptian cat"} & {t["label"] for t in chelsea["top_k"]}
    assert coffee["model"] == "efficientnet-lite0" and coffee["model_version"] == "1"


@pytest.mark.parametrize("backend", ["pillow", "opencv"])
def test_digits_accuracy_on_held_out_files(repository, digit_files, backend) -> None:  # type: ignore[no-untyped-def]
    options = ScoringOptions(decode_backend=backend, resize_backend=backend)
    graph = build_graph("digits", repository, options)
    table = graph.run([path.read_bytes() for path, _ in digit_files])
    predicted = [int(label) for label in table.column("label").to_pylist()]
    accuracy = np.mean([p == truth for p, (_, truth) in zip(predicted, digit_files, strict=True)])
    assert accuracy >= 0.95, accuracy


def test_graph_equals_a_hand_written_reference(repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """Same preprocessing written out with Pillow + numpy, ORT called directly: outputs within 1e-4."""
    model = repository.load("efficientnet-lite0")
    graph = build_graph("efficientnet-lite0", repository, ScoringOptions(raw_outputs=True))
    ours = np.stack(graph.run(list(photo_jpegs.values())).column("raw_output").to_numpy(zero_copy_only=False))
    session = ort.InferenceSession(model.model_uri, providers=["CPUExecutionProvider"])
    m = model.manifest
    for row, data in zip(ours, photo_jpegs.values(), strict=True):
        image = Image.open(io.BytesIO(data))
        scale = m.preprocess.resize_shorter / min(image.size)
        if scale <= 0.5:  # JPEG DCT-domain downscaling, as the decode operator does
            image.draft("RGB", (int(np.ceil(image.size[0] * scale)), int(np.ceil(image.size[1] * scale))))
        image = image.convert("RGB")
        width, height = image.size
        size = (256, round(height * 256 / width)) if width <= height else (round(width * 256 / height), 256)
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (image.size[0] - 224) // 2, (image.size[1] - 224) // 2
        pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
        x = np.ascontiguousarray(((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None])
        reference = session.run(None, {"input": x})[0][0]
        np.testing.assert_allclose(row, reference, atol=1e-4)


def _ops(*specs: tuple[str, dict]) -> list:  # type: ignore[type-arg]
    import operators

    return [operators.create(OperatorSpec(name=name, params=params)) for name, params in specs]


def test_contract_check_names_the_missing_column() -> None:
    with pytest.raises(ContractError, match="'normalize' reads \\['pixels'\\]"):
        check_contract(_ops(("decode", {}), ("normalize", {"mean": [0], "std": [1]})), [SOURCE_SCHEMA["bytes"]])


def test_contract_check_compares_dtype_rank_and_raggedness() -> None:
    """Names alone are not enough: each consumer must get the dtype, rank and raggedness it declares."""
    normalize = ("normalize", {"mean": [0], "std": [1]})
    # Decoded images are ragged uint8 arrays; normalize needs the dense (N, H, W, C) block a crop makes.
    with pytest.raises(
        ContractError,
        match=r"reads 'pixels' as uint8\[N, H, W, C\], but the source writes it as "
        r"ragged uint8\[N, H, W, C\]",
    ):
        check_contract(_ops(normalize), [Column("pixels", "uint8", ("N", "H", "W", "C"), ragged=True)])
    with pytest.raises(ContractError, match=r"as float32\[N, K\], but the source writes it as float32\[N, H, W\]"):
        check_contract(_ops(("postprocess", {"labels": ["a"]})), [Column("output", "float32", ("N", "H", "W"))])
    with pytest.raises(ContractError, match="reads 'input' as float32.*writes it as uint8"):
        check_contract(
            _ops(("infer", {"model_uri": "m.onnx", "input_name": "x", "output_name": "y"})),
            [Column("input", "uint8", ("N", "C", "H", "W"))],
        )
    # The real graph passes, and "..." (any rank) accepts either layout normalize can write.
    for layout in ("NCHW", "NHWC"):
        infer = ("infer", {"model_uri": "m.onnx", "input_name": "x", "output_name": "y"})
        ops = _ops(
            ("decode", {}),
            ("resize", {"shorter": 8}),
            ("center_crop", {"height": 8, "width": 8}),
            ("normalize", {"mean": [0, 0, 0], "std": [1, 1, 1], "layout": layout}),
            infer,
            ("postprocess", {"labels": ["a"]}),
        )
        check_contract(ops, [SOURCE_SCHEMA[c] for c in ("id", "bytes", "error")])


def test_bad_options_fail_before_any_data(repository) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="top_k"):
        ScoringOptions.model_validate({"top_k": 0})
    with pytest.raises(ValidationError, match="extra"):
        ScoringOptions.model_validate({"topk": 3})
    with pytest.raises(ValidationError, match=r"unknown image formats \['JPG'\]"):
        ScoringOptions(formats=("JPG",))
    with pytest.raises(ValidationError, match="at least one image format"):
        ScoringOptions(formats=())
    with pytest.raises(ValidationError, match="0 to 255"):
        ScoringOptions(background=(0, 0, 256))
    assert ScoringOptions(formats=("jpeg", " png")).formats == ("JPEG", "PNG")
    with pytest.raises(ConfigError, match="no model 'nope'"):
        build_graph("nope", repository)


def test_a_failed_onnx_runtime_call_becomes_rows_or_an_exception_as_asked(repository) -> None:  # type: ignore[no-untyped-def]
    """One policy, chosen by a parameter: error rows for a batch job (every row comes out), an InferenceError
    for a caller answering one request (the Serve scorer)."""
    import operators
    from common.errors import InferenceError

    graph = build_graph("digits", repository)
    (infer_spec,) = [s for s in graph.inference if s.name == "infer"]
    wrong_shape = {"input": np.zeros((3, 1, 5, 5), np.float32), "error": np.full(3, None, object)}
    rows = operators.create(infer_spec)(wrong_shape)
    assert [e.split(":")[0] for e in rows["error"]] == ["inference_failed"] * 3 and np.isnan(rows["output"]).all()
    raising = operators.create(OperatorSpec(name="infer", params={**infer_spec.params, "on_error": "raise"}))
    with pytest.raises(InferenceError, match="digits/1/model.onnx: InvalidArgument"):
        raising(wrong_shape)


def test_io_binding_and_chunked_calls_equal_one_plain_run(repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """The IOBinding code that CUDA uses (run here on the CPU device) and ORT calls on a few rows at a time
    give what one session.run on the whole batch gives; failed rows stay NaN."""
    import operators

    graph = build_graph("efficientnet-lite0", repository)
    (infer_spec,) = [s for s in graph.inference if s.name == "infer"]
    plain = operators.create(infer_spec)
    bound = operators.create(OperatorSpec(name="infer", params={**infer_spec.params, "io_binding": True}))
    chunked = operators.create(OperatorSpec(name="infer", params={**infer_spec.params, "max_rows_per_call": 2}))
    x = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    errors = np.array([None, None, "empty: zero bytes", None, None], dtype=object)
    batch = {"id": np.array(list("abcde"), dtype=object), "input": x, "error": errors}
    expected = plain(batch)["output"]
    assert expected.shape == (5, 1000) and np.isfinite(expected[[0, 1, 3, 4]]).all() and np.isnan(expected[2]).all()
    np.testing.assert_allclose(bound(batch)["output"], expected, atol=1e-5)
    np.testing.assert_allclose(chunked(batch)["output"], expected, atol=1e-5, equal_nan=True)


def test_a_stage_given_up_on_starts_no_more_rows(repository, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    """A request past its time stops its stage: the rows not yet begun are skipped (a 504 stops using CPU)."""
    from operators._rows import object_array
    from pipeline.graph import Abandoned, Stage

    stage = Stage(preprocess=build_graph("efficientnet-lite0", repository).preprocess)
    batch = {"id": object_array(["a", "b", "c"]), "bytes": object_array([photo_jpegs["coffee"]] * 3)}
    started: list[int] = []
    assert stage(batch, started.append)["pixels"].shape == (3, 224, 224, 3) and started == [0, 1, 2]

    def give_up_after_one(i: int) -> None:
        if i == 1:
            raise Abandoned("given up")
        started.append(i)

    started.clear()
    with pytest.raises(Abandoned):
        stage(batch, give_up_after_one)
    assert started == [0]
