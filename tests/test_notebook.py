"""The walkthrough notebook runs end to end, in a real Jupyter kernel, from the notebooks/ folder.

Skipped where nbclient or ipykernel is not installed: they are for notebook users, not dependencies.
The notebook starts its own 2-CPU Ray instance in the kernel process and writes to out/walkthrough.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_notebook_runs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=60,  # per cell; the whole notebook takes 10-25 s on 2 cores
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # its paths are relative to notebooks/
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )
    # The in-process run and the batch job (which the notebook checks agree) both scored the demo photos,
    # and the broken JPEG came out as an error row.
    assert "espresso" in printed
    assert "rows: 5 (input rows: 5)" in printed
    assert "truncated: 1" in printed
