"""The exercise checks of notebook 07, run as the notebook runs them.

The notebook has a cell tagged ``exercise-stub`` (functions that raise ``NotImplementedError``) and a cell tagged
``exercise-check`` (a ``check(name, run)`` per exercise). The check cell is self-contained, so it is executed here
in a fresh namespace, with

* the stub cell: every exercise must report "not solved yet" (and the cell must not raise: CI executes it);
* the functions of ``notebooks/solutions/07_spatial_conditioning.py``: every exercise must report "correct";
* the solution with one function replaced by a typical mistake: that exercise must report "wrong" with a hint, the
  others "correct" (a wrong answer, even one that raises, does not stop the later checks). Among the mistakes is
  a function that calls the package function solving the exercise (``repaint_moves``, ``tiled_decode``,
  ``get_learned_conditioning``): the check refuses it, so no exercise is solved by a call the page already imports.

The notebook is read from ``$NOTEBOOK_DIR`` (default ``notebooks/``), the solutions always from
``notebooks/solutions/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_harness import load_solution, run_check_cell, tagged_cell

REPO = Path(__file__).resolve().parent.parent
NAME = "07_spatial_conditioning"
NOTEBOOK = Path(os.environ.get("NOTEBOOK_DIR", REPO / "notebooks")) / f"{NAME}.ipynb"
SOLUTION = REPO / "notebooks" / "solutions" / f"{NAME}.py"
EXERCISES = 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _cell(tag: str) -> str:
    return tagged_cell(NOTEBOOK, tag)


def _solution():
    return load_solution(SOLUTION, "solution_07")


def _namespace(**replace) -> dict:
    """The solution's functions that the stub cell defines, with some replaced by wrong ones."""
    module = _solution()
    names = re.findall(r"^def (\w+)\(", _cell("exercise-stub"), flags=re.MULTILINE)
    assert len(names) == EXERCISES, f"the stub cell defines {names}, expected {EXERCISES} functions"
    missing = [n for n in names if not callable(getattr(module, n, None))]
    assert not missing, f"{SOLUTION} lacks {missing}"
    namespace = {n: getattr(module, n) for n in names}
    namespace.update(replace)
    return namespace


def _run_checks(namespace: dict) -> dict[int, tuple[str, str]]:
    """Execute the notebook's check cell in ``namespace``; {exercise: (mark, message)} from what it prints."""
    return run_check_cell(_cell("exercise-check"), f"<{NAME} exercise-check>", namespace, EXERCISES)


def test_the_stubs_report_not_solved_yet():
    namespace: dict = {}
    exec(compile(_cell("exercise-stub"), f"<{NAME} exercise-stub>", "exec"), namespace)  # noqa: S102
    for k, (mark, message) in _run_checks(namespace).items():
        assert mark == "✗" and message.startswith("not solved yet"), f"exercise {k} on its stub: {mark} {message}"


def test_the_solutions_pass_every_check():
    for k, (mark, message) in _run_checks(_namespace()).items():
        assert mark == "✓", f"exercise {k} with its solution: {mark} {message}"


def test_the_stub_does_not_solve_an_exercise_already():
    """Each stub raises NotImplementedError whatever it is given: no exercise is solved on the page."""
    namespace: dict = {}
    exec(compile(_cell("exercise-stub"), f"<{NAME} exercise-stub>", "exec"), namespace)  # noqa: S102
    args = {"my_inpaint_condition": (None, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8)),
            "my_repaint_moves": (6, 2, 2),
            "my_tiled_decode": (lambda z: z, torch.zeros(1, 4, 4, 4), 2)}
    for name, a in args.items():
        with pytest.raises(NotImplementedError):
            namespace[name](*a)


def test_the_check_restores_the_package_functions_it_hides():
    """While it runs, the check cell hides the notebook's repaint_moves / tiled_decode; afterwards they are back."""
    from ldm_lite.autoencoder.tiled import tiled_decode
    from ldm_lite.diffusion.samplers import repaint_moves

    namespace = _namespace(repaint_moves=repaint_moves, tiled_decode=tiled_decode)
    _run_checks(namespace)
    assert namespace["repaint_moves"] is repaint_moves and namespace["tiled_decode"] is tiled_decode


# ---- typical mistakes, one function each: the check must say "wrong" with a hint ----------------------------
# Exercise 1: the inpainting condition
def _full_image_encoded(ns):  # the hole not blanked: the model is shown the pixels it must fill
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image), F.max_pool2d(hole, model.f)], 1)}


def _known_blanked(ns):  # hole and keep confused: the known pixels blanked
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image * hole), F.max_pool2d(hole, model.f)], 1)}


def _keep_mask_channel(ns):  # the keep mask as the mask channel
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image * (1 - hole)), 1 - F.max_pool2d(hole, model.f)], 1)}


def _mask_averaged(ns):  # average-pooled: a latent pixel that is partly hole gets a fraction
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image * (1 - hole)), F.avg_pool2d(hole, model.f)], 1)}


def _mask_nearest(ns):  # CompVis' script's resizing, not this model's
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image * (1 - hole)), F.interpolate(hole, scale_factor=1 / model.f, mode="nearest")],
        1)}


def _mask_first(ns):  # the channel order swapped
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [F.max_pool2d(hole, model.f), model.encode_first_stage(image * (1 - hole))], 1)}


def _unscaled_latent(ns):  # the first stage's latent without the scale factor
    return {"my_inpaint_condition": lambda model, image, hole: torch.cat(
        [model.encode_first_stage(image * (1 - hole)) / model.scale_factor, F.max_pool2d(hole, model.f)], 1)}


def _full_size_mask(ns):  # the mask left at the image's size
    return {"my_inpaint_condition": lambda model, image, hole: hole}


def _condition_from_the_package(ns):  # the model's own conditioning route: solves nothing by hand
    return {"my_inpaint_condition": lambda model, image, hole: model.get_learned_conditioning(
        {"masked_image": image * (1 - hole), "hole_mask": hole})["c_concat"]}


# Exercise 2: RePaint's walk
def _no_jumps(ns):
    return {"my_repaint_moves": lambda n, jl, jn: [("down", i) for i in range(n)]}


def _jumps_n_times(ns):  # jump_n_sample jumps at each place instead of jump_n_sample - 1
    sol = _solution()
    return {"my_repaint_moves": lambda n, jl, jn: sol.my_repaint_moves(n, jl, jn + 1)}


def _jump_after_the_end(ns):  # a last stretch of full length is walked back up too
    def moves(n, jl, jn):
        out = _solution().my_repaint_moves(n, jl, jn)
        if jl and n % jl == 0:
            last = list(range(n - jl, n))
            out += ([("up", i) for i in reversed(last)] + [("down", i) for i in last]) * (jn - 1)
        return out

    return {"my_repaint_moves": moves}


def _up_in_the_wrong_order(ns):  # going back up in ascending order
    def moves(n, jl, jn):
        out, run = [], []
        for m in _solution().my_repaint_moves(n, jl, jn) + [("end", -1)]:
            if m[0] == "up":
                run.append(m)
                continue
            out += sorted(run, key=lambda u: u[1]) + [m]
            run = []
        return out[:-1]

    return {"my_repaint_moves": moves}


def _no_jump_length_zero(ns):  # the stretch-by-stretch walk without the jump_length = 0 case: range(0, n, 0) raises
    def moves(n, jl, jn):
        out = []
        for start in range(0, n, jl):
            stretch = list(range(start, min(start + jl, n)))
            down = [("down", i) for i in stretch]
            out += down
            if len(stretch) == jl and stretch[-1] + 1 < n:
                out += ([("up", i) for i in reversed(stretch)] + down) * (jn - 1)
        return out

    return {"my_repaint_moves": moves}


def _moves_from_the_package(ns):  # calls the notebook's imported repaint_moves
    exec("from ldm_lite.diffusion.samplers import repaint_moves\n"  # noqa: S102
         "def my_repaint_moves(num_steps, jump_length, jump_n_sample):\n"
         "    return repaint_moves(num_steps, jump_length, jump_n_sample)\n", ns)
    return {}


# Exercise 3: the tiled decoder without overlap
def _one_full_decode(ns):
    return {"my_tiled_decode": lambda decode, z, tile: decode(z)}


def _rows_and_columns_swapped(ns):
    def tiled(decode, z, tile):
        cols = [torch.cat([decode(z[..., y : y + tile, x : x + tile]) for y in range(0, z.shape[-2], tile)], -1)
                for x in range(0, z.shape[-1], tile)]
        return torch.cat(cols, -2)

    return {"my_tiled_decode": tiled}


def _first_image_only(ns):  # the batch dropped
    sol = _solution()
    return {"my_tiled_decode": lambda decode, z, tile: sol.my_tiled_decode(decode, z[:1], tile)}


def _tiles_of_the_wrong_size(ns):  # tiles of tile // 2: more seams than asked for
    sol = _solution()
    return {"my_tiled_decode": lambda decode, z, tile: sol.my_tiled_decode(decode, z, tile // 2)}


def _tiles_from_the_package(ns):  # calls the notebook's imported tiled_decode
    exec("from ldm_lite.autoencoder.tiled import tiled_decode\n"  # noqa: S102
         "def my_tiled_decode(decode, z, tile):\n"
         "    return tiled_decode(decode, z, 4, tile, overlap=0)\n", ns)
    return {}


MISTAKES = [
    (1, _full_image_encoded), (1, _known_blanked), (1, _keep_mask_channel), (1, _mask_averaged), (1, _mask_nearest),
    (1, _mask_first), (1, _unscaled_latent), (1, _full_size_mask), (1, _condition_from_the_package),
    (2, _no_jumps), (2, _jumps_n_times), (2, _jump_after_the_end), (2, _up_in_the_wrong_order),
    (2, _no_jump_length_zero), (2, _moves_from_the_package),
    (3, _one_full_decode), (3, _rows_and_columns_swapped), (3, _first_image_only), (3, _tiles_of_the_wrong_size),
    (3, _tiles_from_the_package),
]


@pytest.mark.parametrize("exercise, mistake", MISTAKES, ids=[m.__name__[1:] for _, m in MISTAKES])
def test_a_typical_mistake_is_reported_wrong(exercise, mistake):
    namespace = _namespace()
    namespace.update(mistake(namespace))
    results = _run_checks(namespace)
    mark, message = results[exercise]
    assert mark == "✗" and message.startswith("wrong -- ") and len(message) > len("wrong -- ") + 10, (
        f"exercise {exercise} with {mistake.__name__}: {mark} {message}")
    for k, (other, text) in results.items():
        if k != exercise:
            assert other == "✓", f"exercise {k} should still pass: {other} {text}"
