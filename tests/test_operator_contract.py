"""Contract checks run on every registered operator (a newly registered one without a sample fails here)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import numpy as np
import pytest

import operators
from operators._rows import object_array
from operators.base import ERROR, Batch, Column, Operator, OperatorSpec
from tests.conftest import MODELS_DIR, encode

RNG = np.random.default_rng(0)


# The library's own operators (tests register a test-only one from tests/crash_operator.py).
BUILT_IN = [n for n in operators.registered_names() if operators.operator_class(n).__module__.startswith("operators.")]


def _images(n: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, size=(40 + 3 * i, 50 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def _pixels(n: int, size: int = 8, channels: int = 1) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _errors(n: int) -> np.ndarray:
    errors = np.full(n, None, dtype=object)
    if n > 2:
        errors[1] = "earlier: failed upstream"
    return errors


DIGITS = MODELS_DIR / "digits" / "1"
LABELS = tuple(str(d) for d in range(10))

# name -> (params, batch factory for N rows)
SAMPLES: dict[str, tuple[dict, Callable[[int], Batch]]] = {
    "read_bytes": ({}, lambda n: {"uri": object_array([str(DIGITS / "labels.txt")] * n), ERROR: _errors(n)}),
    "decode": ({}, lambda n: {"bytes": object_array([encode(im, "PNG") for im in _images(n)]), ERROR: _errors(n)}),
    "resize": ({"shorter": 16}, lambda n: {"image": object_array(_images(n)), ERROR: _errors(n)}),
    "center_crop": ({"height": 24, "width": 24}, lambda n: {"image": object_array(_images(n)), ERROR: _errors(n)}),
    "normalize": ({"mean": [0.0], "std": [255.0]}, lambda n: {"pixels": _pixels(n), ERROR: _errors(n)}),
    "infer": (
        {"model_uri": str(DIGITS / "model.onnx"), "input_name": "input", "output_name": "logits"},
        lambda n: {"input": RNG.random((n, 1, 8, 8), dtype=np.float32), ERROR: _errors(n)},
    ),
    "postprocess": (
        {"labels": LABELS, "top_k": 3},
        lambda n: {"output": RNG.normal(size=(n, 10)).astype(np.float32), ERROR: _errors(n)},
    ),
    "embed": (
        {"l2_normalize": True},
        lambda n: {"output": RNG.normal(size=(n, 12)).astype(np.float32), ERROR: _errors(n)},
    ),
}


def _build(name: str) -> tuple[Operator, Callable[[int], Batch]]:
    params, factory = SAMPLES[name]
    op = operators.create(OperatorSpec(name=name, params=params))
    op.setup()
    return op, factory


def _rows_equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _check_column(values: np.ndarray, column: Column) -> None:
    """``values`` hold what ``column`` declares: dtype, rank, raggedness (None allowed in object columns)."""
    if column.dtype in ("str", "bytes") or column.ragged:
        assert values.dtype == object and values.ndim == 1, column
        python_type = {"str": str, "bytes": bytes}.get(column.dtype)
        for value in values:
            if value is None:
                continue
            if python_type is not None:
                assert isinstance(value, python_type), (column, type(value))
            else:
                assert value.dtype == np.dtype(column.dtype) and value.ndim == len(column.axes) - 1, column
        return
    assert values.dtype == np.dtype(column.dtype), column
    if column.rank is not None:
        assert values.ndim == column.rank, column


def test_every_declared_dtype_is_real() -> None:
    for name in BUILT_IN:
        op = _build(name)[0]
        for column in (*op.inputs(), *op.outputs()):
            assert column.dtype in ("str", "bytes") or np.dtype(column.dtype), column
            assert column.axes[0] == "N", column


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_operator_has_a_contract_sample(name: str) -> None:
    assert name in SAMPLES, f"register a contract sample for new operator {name!r} in this file"


@pytest.mark.parametrize("name", sorted(SAMPLES))
class TestContract:
    def test_pickles(self, name: str) -> None:
        op, factory = _build(name)
        clone = pickle.loads(pickle.dumps(op))
        batch = factory(3)
        a, b = op(batch), clone(batch)
        for column in a:
            assert all(_rows_equal(x, y) for x, y in zip(a[column], b[column], strict=True)), column

    def test_does_not_mutate_input(self, name: str) -> None:
        op, factory = _build(name)
        batch = factory(4)
        before = copy.deepcopy(batch)
        op(batch)
        assert batch.keys() == before.keys()
        for column in batch:
            assert all(_rows_equal(x, y) for x, y in zip(batch[column], before[column], strict=True)), column

    def test_declared_columns_rows_and_dtypes(self, name: str) -> None:
        op, factory = _build(name)
        out = op(factory(4))
        for column in op.outputs():
            assert column.name in out, f"{name} did not write {column.name}"
            _check_column(out[column.name], column)
            assert len(out[column.name]) == 4
        for dropped in op.drops:
            assert dropped not in out
        assert out[ERROR][1] == "earlier: failed upstream", "a failed row must keep its error"

    def test_empty_batch(self, name: str) -> None:
        op, factory = _build(name)
        out = op(factory(0))
        assert all(len(v) == 0 for v in out.values())

    def test_batch_of_one_equals_row_in_batch(self, name: str) -> None:
        op, factory = _build(name)
        batch = factory(5)
        whole = op(batch)
        for i in (0, 3):
            single = op({k: v[i : i + 1] for k, v in batch.items()})
            for column in whole:
                a, b = single[column][0], whole[column][i]
                if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
                else:
                    assert _rows_equal(a, b), column
