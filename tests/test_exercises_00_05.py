"""The exercise checks of notebooks 00-05, run as the notebooks run them.

Each notebook ends with a cell tagged ``exercise-stub`` (functions that raise ``NotImplementedError``) and a cell
tagged ``exercise-check`` (a ``check(name, run)`` per exercise). The check cell is self-contained, so it is executed
here in a fresh namespace, with

* the stub cell: every exercise must report "not solved yet" (and the cell must not raise: CI executes it);
* the functions of ``notebooks/solutions/NN_*.py``: every exercise must report "correct";
* the solution with one function replaced by a typical mistake: that exercise must report "wrong", the others
  "correct".

The notebooks are read from ``$NOTEBOOK_DIR`` (default ``notebooks/``), the solutions always from
``notebooks/solutions/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = Path(os.environ.get("NOTEBOOK_DIR", REPO / "notebooks"))
SOLUTIONS = REPO / "notebooks" / "solutions"
NOTEBOOKS = {
    "00": "00_setup_and_data",
    "01": "01_perceptual_autoencoder",
    "02": "02_diffusion_objective",
    "03": "03_unet",
    "04": "04_latent_diffusion",
    "05": "05_samplers",
}
EXERCISES = {nn: 3 for nn in NOTEBOOKS}  # exercises with a check, per notebook
RESULT = re.compile(r"^(✓|✗) exercise (\d+), ([^:]+): (.*)$")

pytestmark = pytest.mark.usefixtures("one_thread")


def _cell(nn: str, tag: str) -> str:
    path = NOTEBOOK_DIR / f"{NOTEBOOKS[nn]}.ipynb"
    nb = nbformat.read(path, as_version=4)
    found = [c.source for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        pytest.fail(f"{path} has {len(found)} cells tagged {tag!r}, expected one: splice staging/exercises_{nn}.json "
                    "into it (staging/splice.py)")
    return found[0]


def _solution(nn: str):
    name = NOTEBOOKS[nn]
    spec = importlib.util.spec_from_file_location(f"solution_{nn}", SOLUTIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _solution_namespace(nn: str, **replace) -> dict:
    """The solution's functions (those the stub cell defines), with some replaced by wrong ones."""
    module = _solution(nn)
    names = re.findall(r"^def (\w+)\(", _cell(nn, "exercise-stub"), flags=re.MULTILINE)
    missing = [n for n in names if not callable(getattr(module, n, None))]
    assert not missing, f"notebooks/solutions/{NOTEBOOKS[nn]}.py lacks {missing}"
    namespace = {n: getattr(module, n) for n in names}
    namespace.update(replace)
    return namespace


def _run_checks(nn: str, namespace: dict) -> dict[int, tuple[str, str]]:
    """Execute the check cell in ``namespace``; {exercise number: (mark, message)} from what it prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # the notebook's own cell, run as Jupyter runs it
        exec(compile(_cell(nn, "exercise-check"), f"<{NOTEBOOKS[nn]} exercise-check>", "exec"), namespace)  # noqa: S102
    results = {}
    for line in out.getvalue().splitlines():
        m = RESULT.match(line)
        if m:
            assert int(m.group(2)) not in results, f"exercise {m.group(2)} reported twice:\n{out.getvalue()}"
            results[int(m.group(2))] = (m.group(1), m.group(4))
    assert sorted(results) == list(range(1, EXERCISES[nn] + 1)), (
        f"expected a result line for exercises 1-{EXERCISES[nn]}, got:\n{out.getvalue()}")
    return results


@pytest.mark.parametrize("nn", list(NOTEBOOKS))
def test_stubs_report_not_solved_yet(nn):
    namespace: dict = {}
    exec(compile(_cell(nn, "exercise-stub"), f"<{NOTEBOOKS[nn]} exercise-stub>", "exec"), namespace)  # noqa: S102
    for k, (mark, message) in _run_checks(nn, namespace).items():
        assert mark == "✗" and message.startswith("not solved yet"), f"exercise {k} on its stub: {mark} {message}"


@pytest.mark.parametrize("nn", list(NOTEBOOKS))
def test_solutions_pass_every_check(nn):
    for k, (mark, message) in _run_checks(nn, _solution_namespace(nn)).items():
        assert mark == "✓", f"exercise {k} with its solution: {mark} {message}"


# ---- typical mistakes, one function each: the check must say "wrong" -----------------------------------------
def _flip_vertical(nn):
    sol = _solution(nn)
    swap = {"above": "below", "below": "above"}
    return {"relation_from_boxes": lambda a, b: swap.get(sol.relation_from_boxes(a, b), sol.relation_from_boxes(a, b))}


def _count_images(nn):
    from ldm_lite.data import SHAPES

    return {"shape_counts": lambda data, n: [sum(any(o["shape"] == s for o in data.layout(i)) for i in range(n))
                                             for s in SHAPES]}


def _kl_reversed(nn):
    sol = _solution(nn)
    return {"kl_between": lambda mq, lq, mp, lp: sol.kl_between(mp, lp, mq, lq)}


def _vq_beta_on_codebook(nn):  # taming-transformers' legacy loss: same value, other gradients
    sol = _solution(nn)

    def vq(z, codebook, beta=0.25):
        z_q, idx, _ = sol.vq_quantize(z, codebook, beta)
        e = codebook[idx].movedim(-1, 1)
        return z_q, idx, beta * ((e - z.detach()) ** 2).mean() + ((z - e.detach()) ** 2).mean()

    return {"vq_quantize": vq}


def _psnr_on_minus_one_one(nn):
    return {"my_psnr": lambda x, y: -10 * torch.log10((x - y).pow(2).mean(dim=(1, 2, 3)))}


def _v_sign(nn):
    return {"from_v": lambda x_t, v, a: (a.sqrt() * x_t + (1 - a).sqrt() * v, (1 - a).sqrt() * x_t - a.sqrt() * v)}


def _cosine_off_by_one(nn):
    def alpha_bar(T, s=0.008):
        f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T)]
        return torch.tensor(f, dtype=torch.float64) / f[0]

    return {"cosine_alpha_bar": alpha_bar}


def _shift_backwards(nn):
    sol = _solution(nn)
    return {"time_shift_matrix": lambda delta, dim: sol.time_shift_matrix(-delta, dim)}


def _resblock_without_skip(nn):
    sol = _solution(nn)
    return {"resblock_parameters": lambda c, e, o: sol.resblock_parameters(c, e, o) - (c * o + o if c != o else 0)}


def _scale_is_std(nn):
    return {"scale_factor_of": lambda z: float(z.std())}


def _encode_unscaled(nn):
    return {"my_encode": lambda model, images: model.first_stage.encode(images).mean}


def _loss_unscaled(nn):
    def loss(model, images, t, noise):
        z = model.first_stage.encode(images).mean  # the scale factor forgotten
        a = model.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (noise - model.apply_model(a.sqrt() * z + (1 - a).sqrt() * noise, t)).pow(2).mean()

    return {"my_ldm_loss": loss}


def _leading_without_offset(nn):
    sol = _solution(nn)

    def timesteps(steps, T, spacing):
        ts = sol.my_timesteps(steps, T, spacing)
        return [t - 1 for t in ts] if spacing == "leading" else ts

    return {"my_timesteps": timesteps}


def _invert_downwards(nn):
    sol = _solution(nn)
    return {"ddim_invert_step": lambda eps, a_t, a_next, z: sol.ddim_invert_step(eps, a_next, a_t, z)}


MISTAKES = [
    ("00", 1, _flip_vertical), ("00", 3, _count_images),
    ("01", 1, _kl_reversed), ("01", 2, _vq_beta_on_codebook), ("01", 3, _psnr_on_minus_one_one),
    ("02", 1, _v_sign), ("02", 2, _cosine_off_by_one),
    ("03", 1, _shift_backwards), ("03", 2, _resblock_without_skip),
    ("04", 1, _scale_is_std), ("04", 2, _encode_unscaled), ("04", 3, _loss_unscaled),
    ("05", 1, _leading_without_offset), ("05", 3, _invert_downwards),
]


@pytest.mark.parametrize("nn, exercise, mistake", MISTAKES, ids=[f"{nn}-{m.__name__[1:]}" for nn, _, m in MISTAKES])
def test_a_typical_mistake_is_reported_wrong(nn, exercise, mistake):
    results = _run_checks(nn, _solution_namespace(nn, **mistake(nn)))
    mark, message = results[exercise]
    assert mark == "✗" and message.startswith("wrong -- ") and len(message) > len("wrong -- ") + 10, (
        f"exercise {exercise} with {mistake.__name__}: {mark} {message}")
    for k, (other, text) in results.items():
        if k != exercise:
            assert other == "✓", f"exercise {k} should still pass: {other} {text}"
