"""Every notebook runs end to end, in a real Jupyter kernel, from the notebooks/ folder; a cell error fails.

Each notebook must also show what it promises: printed results, and pictures (PNG outputs) where it draws.
Skipped where nbclient or ipykernel is not installed: they are for notebook users, not dependencies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# notebook -> (text its cells must print, PNG pictures it must draw at least)
EXPECTED = {
    "walkthrough.ipynb": (["espresso", "rows: 5 (input rows: 5)", "truncated: 1"], 0),
    "01_quickstart.ipynb": (["rows: 5 (input rows: 5)", "coffee.jpg      espresso", "in-process and batch agree"], 1),
    "02_serving.ipynb": (["espresso", "'ready': True", "{'1': ", "'2': "], 1),
    "03_performance.ipynb": (["machine limit"], 2),
    "04_embeddings.ipynb": (["(16, 1280)", "chelsea (crop)"], 1),
}


def test_every_notebook_is_checked() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_shows_its_results(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=180,  # per cell; the serving notebook's start of Ray and the app takes the longest
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # their paths are relative to notebooks/
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    printed = "".join(
        "".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    texts, pictures = EXPECTED[name]
    for text in texts:
        assert text in printed, (text, printed[-2000:])
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= pictures
