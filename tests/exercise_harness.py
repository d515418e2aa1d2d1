"""Shared by the exercise tests: read a notebook's tagged cell, load a solution file, run a check cell and parse
the lines it prints (``✓ exercise 2, name: message`` / ``✗ ...``)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import nbformat

RESULT = re.compile(r"^(✓|✗) exercise (\d+), ([^:]+): (.*)$")


def tagged_cell(notebook: Path, tag: str) -> str:
    """The source of the one cell of ``notebook`` tagged ``tag``."""
    nb = nbformat.read(notebook, as_version=4)
    found = [c.source for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"{notebook} has {len(found)} cells tagged {tag!r}, expected one"
    return found[0]


def load_solution(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check_cell(source: str, label: str, namespace: dict, exercises: int) -> dict[int, tuple[str, str]]:
    """Execute a check cell in ``namespace``; {exercise: (mark, message)} from what it prints, one per exercise."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, label, "exec"), namespace)  # noqa: S102
    results = {}
    for line in out.getvalue().splitlines():
        m = RESULT.match(line)
        if m:
            assert int(m.group(2)) not in results, f"exercise {m.group(2)} reported twice:\n{out.getvalue()}"
            results[int(m.group(2))] = (m.group(1), m.group(4))
    assert sorted(results) == list(range(1, exercises + 1)), (
        f"expected a result line for exercises 1-{exercises}, got:\n{out.getvalue()}")
    return results
