"""Why a row failed: the one enumeration of error reasons.

A failed row's ``error`` is ``"<reason>: <detail>"``; the reason is one of these values, so run summaries,
dashboards and the README's table (checked against this list by a test) all speak the same words.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Error reasons, in the order a row meets them (read, decode, resize, crop, infer)."""

    READ_FAILED = "read_failed"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    BAD_DIMENSIONS = "bad_dimensions"
    TRUNCATED = "truncated"
    DECODE_FAILED = "decode_failed"
    RESIZE_FAILED = "resize_failed"
    CROP_FAILED = "crop_failed"
    INFERENCE_FAILED = "inference_failed"
    WORKER_CRASHED = "worker_crashed"

    def row_error(self, detail: str) -> str:
        """The ``error`` value of a row that failed for this reason (bounded: details can be long)."""
        return f"{self.value}: {detail}"[:500]


def reason_of(error: str) -> Reason:
    """The reason of an ``error`` value (the text before its first ``:``)."""
    return Reason(error.split(":", 1)[0])
