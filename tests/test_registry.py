from __future__ import annotations

import pytest

import operators
from common.errors import ConfigError, DuplicateOperatorError, UnknownOperatorError
from operators import Operator, OperatorSpec, register
from operators.base import Batch


def test_duplicate_names_are_refused_naming_both_classes() -> None:
    with pytest.raises(DuplicateOperatorError) as excinfo:

        @register("resize")
        class AnotherResize(Operator):
            def __call__(self, batch: Batch) -> Batch:
                return batch

    message = str(excinfo.value)
    assert "operators.resize.Resize" in message and "AnotherResize" in message
    assert operators.operator_class("resize").__name__ == "Resize"


def test_unknown_operator_lists_the_known_ones() -> None:
    with pytest.raises(UnknownOperatorError) as excinfo:
        operators.create(OperatorSpec(name="sharpen"))
    for name in ("decode", "resize", "center_crop", "normalize", "infer", "postprocess"):
        assert name in str(excinfo.value)


def test_parameters_are_validated_when_built() -> None:
    with pytest.raises(ConfigError, match="shorter"):
        operators.create(OperatorSpec(name="resize", params={"shorter": -3}))
    with pytest.raises(ConfigError, match="extra"):
        operators.create(OperatorSpec(name="resize", params={"shorter": 8, "antialias": True}))


def test_registry_keys_equal_module_names() -> None:
    for name in operators.registered_names():
        assert operators.operator_class(name).__module__ == f"operators.{name}"
