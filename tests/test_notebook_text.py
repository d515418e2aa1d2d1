"""What a reader of the committed notebooks sees: outputs and markdown that make sense on any machine.

Checked over every notebook in notebooks/ (the numbered chapters and any added later; notebooks/solutions holds
no notebooks and is not scanned):

* no committed output names a path of the machine that ran it (``/work/...``, ``/root/...``, ``/home/...``,
  ``/tmp/...`` such as a kernel's ``/tmp/ipykernel_123/456.py``);
* no output is a raw widget repr (``VBox(children=...)``), which is all a reader without the kernel sees;
* no stray ``False`` / ``None`` or matplotlib object repr (``<Figure size ...>`` without the image,
  ``[<matplotlib.lines.Line2D ...>]``, ``Text(...)``) left by a cell's last expression;
* no markdown calls the attention formula "Eq. 3": the attention formula is unnumbered in the CVPR 2022 paper,
  whose Eq. 3 is the conditional LDM loss, so an "Eq. 3" must be about a loss or objective;
* no markdown refers to documents, issues or sessions outside the repository (``DESIGN``, "the issue",
  "this session"), or to what an earlier version of the course did; a public GitHub issue cited with its
  repository (``CompVis/latent-diffusion issue #139``) is a reference for the reader and allowed;
* no markdown holds an unfilled placeholder ``⟨...⟩``.

Each check is a function returning the problems it finds; the tests at the end feed each one a cell it must
reject, so none of them can pass by finding nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))  # top level only: notebooks/solutions is not scanned
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")

# A path of the machine: /work/, /root/, /home/ or /tmp/ at the start of a path (not inside a URL or a longer word)
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:work|root|home|tmp)/[^\s'\"),;]*")
WIDGET_REPR = re.compile(
    r"^\s*(?:VBox|HBox|Box|GridBox|Tab|Accordion|Output|interactive|IntSlider|FloatSlider|IntRangeSlider|"
    r"FloatRangeSlider|SelectionSlider|Dropdown|ToggleButtons|RadioButtons|Checkbox|Button|Label|HTML|Play)\(")
STRAY_REPR = re.compile(r"^\s*(?:False|None|<Figure size [^>]*>|\[?<matplotlib\.[^>]*>\]?|Text\(.*\))\s*$", re.S)
EQ3 = re.compile(r"\bEq(?:uation)?s?\.?\s*\(?3\)?(?!\d|\.\d)")
EQ3_IS_LOSS = re.compile(r"loss|objective|L_\{?LDM|\\mathcal\s*L|L_\{\\text\{LDM", re.I)
REPO_CITATION = re.compile(r"\b[\w.-]+/[\w.-]+\b.{0,80}\bissues?\b|\bissues?\b.{0,80}\b[\w.-]+/[\w.-]+\b|github\.com",
                           re.I | re.S)
OUTSIDE_REFERENCES = [
    (re.compile(r"\bDESIGN(?:\.md)?\b"), "refers to a design document outside the repository"),
    (re.compile(r"\bsessions?\b", re.I), "refers to a session"),
    (re.compile(r"\bissues?\b", re.I), "refers to an issue (cite a public one with its repository)"),
    (re.compile(r"\b(?:earlier|previous|older|old|first|last)\s+(?:versions?|editions?|drafts?)\s+of\s+(?:this|the)\s+"
                r"(?:notebook|chapter|course)|\b(?:previous|earlier)\s+version'?s?\b", re.I),
     "speaks about an earlier version of the course"),
]


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _output_texts(output) -> list[str]:
    """Every piece of text an output shows: stream text, the text mime types, an error's traceback."""
    texts = [_text(output.get("text"))] if "text" in output else []
    data = output.get("data") or {}
    texts += [_text(data[m]) for m in TEXT_MIMES if m in data]
    texts += [_text(t) for t in output.get("traceback", [])]
    return texts


def machine_paths(cells) -> list[str]:
    found = []
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            for text in _output_texts(output):
                found += [f"cell {cell.get('id')}: {m.group(0)[:80]}" for m in MACHINE_PATH.finditer(text)]
    return found


def widget_reprs(cells) -> list[str]:
    found = []
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            plain = _text((output.get("data") or {}).get("text/plain"))
            if WIDGET_REPR.match(plain):
                found.append(f"cell {cell.get('id')}: {plain[:80]!r}")
    return found


def stray_outputs(cells) -> list[str]:
    found = []
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            data = output.get("data") or {}
            if output.get("output_type") not in ("execute_result", "display_data") or "image/png" in data:
                continue
            plain = _text(data.get("text/plain"))
            if STRAY_REPR.match(plain):
                found.append(f"cell {cell.get('id')}: {plain.strip()[:60]!r} (end the cell with ';' or assign it)")
    return found


def _markdown(cells):
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            yield cell.get("id"), _text(cell.get("source"))


def attention_called_eq3(cells) -> list[str]:
    found = []
    for cid, text in _markdown(cells):
        for m in EQ3.finditer(text):
            around = text[max(0, m.start() - 150): m.end() + 150]
            if not EQ3_IS_LOSS.search(around):
                found.append(f"cell {cid}: {' '.join(around.split())[:160]!r} -- Eq. 3 of the CVPR paper is the "
                             "conditional LDM loss; the attention formula is unnumbered")
    return found


def outside_references(cells) -> list[str]:
    found = []
    for cid, text in _markdown(cells):
        for pattern, why in OUTSIDE_REFERENCES:
            for m in pattern.finditer(text):
                if why.startswith("refers to an issue"):
                    sentence_start = max(text.rfind(". ", 0, m.start()), text.rfind("\n\n", 0, m.start()), 0)
                    sentence_end = min([i for i in (text.find(". ", m.end()), text.find("\n\n", m.end())) if i >= 0]
                                       or [len(text)])
                    if REPO_CITATION.search(text[sentence_start: sentence_end + 1]):
                        continue  # a public GitHub issue, cited with its repository
                found.append(f"cell {cid}: {why}: {' '.join(text[max(0, m.start() - 60): m.end() + 60].split())!r}")
    return found


def unfilled_placeholders(cells) -> list[str]:
    found = []
    for cid, text in _markdown(cells):
        for m in re.finditer("⟨", text):
            found.append(f"cell {cid}: {' '.join(text[m.start(): m.start() + 60].split())!r}")
    return found


CHECKS = {
    "machine paths in outputs": machine_paths,
    "raw widget reprs in outputs": widget_reprs,
    "stray False / None / matplotlib reprs in outputs": stray_outputs,
    "attention formula called Eq. 3": attention_called_eq3,
    "references outside the repository or to earlier versions": outside_references,
    "unfilled placeholders in markdown": unfilled_placeholders,
}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9, f"expected the chapters 00-08 in {NOTEBOOK_DIR}, found {len(NOTEBOOKS)}"


@pytest.mark.parametrize("check", list(CHECKS), ids=[c.replace(" ", "_") for c in CHECKS])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_text(path, check):
    cells = nbformat.read(path, as_version=4).cells
    problems = CHECKS[check](cells)
    assert not problems, f"{path.name}: {check}:\n  " + "\n  ".join(problems[:20]) + (
        f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")


# ------------------------------------------------------------------------------------------------------------------
# Each check must reject what it is there to reject, and pass what the course legitimately writes
# ------------------------------------------------------------------------------------------------------------------
def _code(*outputs, cid="c"):
    return nbformat.v4.new_code_cell(source="x", outputs=list(outputs), id=cid)


def _md(text, cid="m"):
    return nbformat.v4.new_markdown_cell(text, id=cid)


def test_machine_path_check_can_fail():
    warning = nbformat.v4.new_output("stream", name="stderr",
                                     text="/tmp/ipykernel_30452/3824233215.py:20: FeatureSubstituteWarning: ...")
    folder = nbformat.v4.new_output("stream", name="stdout", text="ImageFolderDataset('/tmp/tmpsz_0l6gu/my_images')")
    checkout = nbformat.v4.new_output("execute_result", data={"text/plain": "'/work/main/runs/x'"}, execution_count=1)
    home = nbformat.v4.new_output("error", ename="E", evalue="", traceback=["File /home/me/x.py, line 3"])
    for out in (warning, folder, checkout, home):
        assert machine_paths([_code(out)]), out
    fine = nbformat.v4.new_output("stream", name="stderr", text=(
        "<cell>:20: warning; ldm_lite/metrics/quality.py:32; ~/.cache/torch/hub; runs/ldm_openmoji64; "
        "https://openmoji.org/home/library; my_images/broken.jpg; data/pretrained/x.safetensors"))
    assert not machine_paths([_code(fine)])


def test_widget_and_stray_checks_can_fail():
    raw = nbformat.v4.new_output("display_data", data={"text/plain": "VBox(children=(IntSlider(value=0),))"})
    assert widget_reprs([_code(raw)])
    note = nbformat.v4.new_output("display_data", data={
        "text/plain": "[an interactive widget (ipywidgets): its controls appear when this cell runs in Jupyter]",
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0}})
    assert not widget_reprs([_code(note)])
    for plain in ("False", "None", "<Figure size 640x480 with 1 Axes>",
                  "[<matplotlib.lines.Line2D at 0x7f>]", "Text(0.5, 1.0, 'title')"):
        assert stray_outputs([_code(nbformat.v4.new_output("execute_result", data={"text/plain": plain},
                                                           execution_count=1))]), plain
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBO", "text/plain": "<Figure size 1x1>"})
    number = nbformat.v4.new_output("execute_result", data={"text/plain": "0.25"}, execution_count=1)
    assert not stray_outputs([_code(figure), _code(number)])


def test_markdown_checks_can_fail():
    assert attention_called_eq3([_md("the image features attend to the text through **cross-attention** (Eq. 3),\n"
                                     "$$\\mathrm{Attention}(Q,K,V) = \\mathrm{softmax}(QK^T/\\sqrt d)V$$")])
    assert attention_called_eq3([_md("| 03 | the UNet with cross-attention (Sec. 3.3, Eq. 3) |")])
    assert not attention_called_eq3([_md("trained together with the UNet on the conditional LDM loss (Eq. 3)")])
    assert not attention_called_eq3([_md("the attention formula of Sec. 3.3; Eq. 2 and Eq. 30 of another paper")])
    for text in ("as DESIGN.md says", "see the issue for details", "fixed in this session",
                 "which a previous version of this notebook used", "Earlier versions of this notebook: a third",
                 "the open issues list it", "issue #12 asks for it"):
        assert outside_references([_md(text)]), text
    for text in ("where p_uncond sits in CompVis's public training code is the question of "
                 "CompVis/latent-diffusion issue #139.",
                 "reported FIDs above the paper's (CompVis/latent-diffusion GitHub issues): #138 and #213",
                 "the design of the UNet follows ADM", "a Sec. 4.1 reading"):
        assert not outside_references([_md(text)]), text
    assert unfilled_placeholders([_md("the difference is ⟨value⟩ [⟨lo⟩, ⟨hi⟩]")])
    assert not unfilled_placeholders([_md("the difference is 4.0 [−0.3, 8.9]")])
