"""The operator library. Importing this package registers every operator (one module each)."""

from operators import center_crop, decode, embed, infer, normalize, postprocess, read_bytes, resize  # noqa: F401
from operators._registry import create, operator_class, register, registered_names
from operators.base import Batch, Column, Operator, OperatorSpec, RowError

__all__ = [
    "Batch",
    "Column",
    "Operator",
    "OperatorSpec",
    "RowError",
    "create",
    "operator_class",
    "register",
    "registered_names",
]
