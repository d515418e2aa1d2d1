"""Execute every course notebook top to bottom, from a fresh kernel, at smoke scale.

The committed notebooks carry laptop-scale outputs for readers on GitHub; here they are re-run with
``LDM_SCALE=smoke`` (outputs are not compared -- they depend on the scale -- but every cell must run
without error, and a notebook must finish within its time budget).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest

from ldm_lite.notebook_exec import notebook_client

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Every notebook runs in <= 90 s on 2 CPU cores at smoke scale. The assertion leaves room for a
# slower or busier CI machine; it catches a notebook that accidentally runs at a larger scale.
BUDGET_S = float(os.environ.get("LDM_NOTEBOOK_BUDGET_S", "300"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_scale(path, monkeypatch):
    monkeypatch.setenv("LDM_SCALE", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # as `ldm-lite execute-notebook` runs them: text summaries instead of tqdm's widget bars, which nothing
    # renders in a headless kernel (a CI run once stalled ~10 min in notebook 02 with widget bars on)
    monkeypatch.setenv("LDM_PROGRESS", "summary")
    # notebook_client, not nbclient's plain NotebookClient: a cell that shows an ipywidgets Output (every
    # interact) stalled the plain client until its timeout in about a third of runs on this machine -- a reply
    # whose ZeroMQ wake-up was lost (ldm_lite/notebook_exec.py explains)
    nb = nbformat.read(path, as_version=4)
    client = notebook_client(nb, timeout=150, kernel_name="python3",
                             resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed <= BUDGET_S, f"{path.name} took {elapsed:.0f} s at smoke scale (budget {BUDGET_S:.0f} s)"


# Notebooks whose committed outputs were produced by `ldm-lite execute-notebook`. The older
# chapters predate the command; add each one here when it is re-executed with it.
EXECUTED_BY_SCRIPT = tuple(sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb")))


@pytest.mark.parametrize("stem", EXECUTED_BY_SCRIPT)
def test_committed_outputs_are_laptop_scale_and_say_so(stem):
    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / f"{stem}.ipynb", as_version=4)
    meta = nb.metadata.get("ldm_lite")
    assert meta, f"{stem}: run `ldm-lite execute-notebook notebooks/{stem}.ipynb --scale laptop` before committing"
    assert meta["scale"] == "laptop", f"{stem}: committed outputs are at {meta['scale']!r} scale, not laptop"
    assert meta["wall_time_s"] <= 600, f"{stem}: {meta['wall_time_s']} s at laptop scale (budget 600 s)"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{stem}: committed outputs contain errors"
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert None not in counts and counts == sorted(counts), (
        f"{stem}: code cells were added or edited after the notebook was executed (execution counts {counts}); "
        f"re-run `ldm-lite execute-notebook notebooks/{stem}.ipynb --scale laptop`")
    frozen = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if re.search(r"(?<!\d)0%\|", o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))]
    assert not frozen, f"{stem}: a progress bar frozen at 0/N is committed (execute with ldm-lite execute-notebook)"
