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
        if operators.operator_class(name).__module__.startswith("operators."):  # not a test's own operator
            assert operators.operator_class(name).__module__ == f"operators.{name}"


def test_an_operator_from_a_module_that_cannot_be_imported_is_refused_when_the_graph_is_built() -> None:
    with pytest.raises(ConfigError, match="cannot import its module 'no_such_package.steps'"):
        operators.create(OperatorSpec(name="watermark", module="no_such_package.steps"))


def test_an_operator_named_with_its_module_is_imported_and_built() -> None:
    op = operators.create(OperatorSpec(name="crash_on_marker", module="tests.crash_operator"))
    assert type(op).__module__ == "tests.crash_operator"
