"""What a batch run did, for people (``render``) and machines (``as_json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def plural(count: int, noun: str) -> str:
    """``1 error``, ``2 errors``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


@dataclass
class RunSummary:
    """Rows in and out, errors by reason, and the two times a user cares about.

    ``wall_s`` is what the user waited, from the moment the command started (Ray's start-up included, when the
    caller passes that moment); ``first_predictions_s`` is when the first predictions arrived, on the same
    clock. ``images_per_s_running`` counts from there: the throughput once the pipeline is running, which a
    longer input approaches.
    """

    input_rows: int | None
    rows: int
    error_rows: int
    errors_by_reason: dict[str, int]
    wall_s: float
    first_predictions_s: float | None
    rows_after_first: int
    plan: str
    output: str

    @property
    def images_per_s(self) -> float:
        """Over the whole wall time."""
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def images_per_s_running(self) -> float | None:
        """From the first predictions to the end; None when everything came in one batch."""
        if self.first_predictions_s is None or self.rows_after_first == 0:
            return None
        running_s = self.wall_s - self.first_predictions_s
        return self.rows_after_first / running_s if running_s > 0 else None

    def render(self) -> str:
        lines = [
            f"rows: {self.rows}" + (f" (input rows: {self.input_rows})" if self.input_rows is not None else ""),
            f"predictions: {self.rows - self.error_rows}",
            f"errors: {self.error_rows}",
        ]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.errors_by_reason.items())]
        lines.append(f"wall time: {self.wall_s:.1f} s (what you waited, from the command's start: start-up included)")
        if self.first_predictions_s is not None:
            lines.append(f"first predictions after: {self.first_predictions_s:.1f} s")
        running = self.images_per_s_running
        lines.append(
            f"images/s once running: {running:.1f}" if running is not None else "images/s once running: - (one batch)"
        )
        lines += [
            f"images/s over the wall time: {self.images_per_s:.1f}",
            f"plan: {self.plan}",
            f"output: {self.output}",
        ]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "images_per_s": self.images_per_s,
            "images_per_s_running": self.images_per_s_running,
        }
