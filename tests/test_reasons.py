"""Error reasons are one enumeration, and the README's table of them says exactly that list."""

from __future__ import annotations

import re

import pytest

from operators.reasons import Reason, reason_of
from tests.conftest import REPO


def _readme_reasons() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| reason | when |") :].split("\n\n", 1)[0]
    return [name for row in table.splitlines()[2:] for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])]


def test_readme_table_lists_every_reason_once() -> None:
    listed = _readme_reasons()
    assert sorted(listed) == sorted(r.value for r in Reason)
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("reason", list(Reason))
def test_error_values_round_trip(reason: Reason) -> None:
    error = reason.row_error("detail: with a colon " + "x" * 600)
    assert error.startswith(f"{reason.value}: detail") and len(error) == 500
    assert reason_of(error) is reason and f"{reason}" == str(reason) == reason.value


def test_readme_options_table_states_the_defaults_of_scoring_options() -> None:
    """Defaults live in ScoringOptions; the README's table must say the same, flag by flag."""
    from pipeline.options import ScoringOptions

    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| flag | field | default |") :].split("\n\n", 1)[0]
    shown = {}
    for row in table.splitlines()[2:]:
        flag, field, default = (cell.strip().strip("`") for cell in row.split("|")[1:4])
        shown[field] = default
    assert sorted(shown) == sorted(ScoringOptions.model_fields)

    def spelled(value: object) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return f"{value:,}" if isinstance(value, int) else str(value)

    for field, info in ScoringOptions.model_fields.items():
        assert shown[field] == spelled(info.default), field
