"""The package's architecture, pinned: its modules form layers, and imports only go down.

An ast walk over every module of ``ldm_lite/`` (no import is executed) collects each ``import ldm_lite...`` and
``from ldm_lite... import ...`` (relative ones resolved, and those inside functions too) and checks

* that a package-internal import sits at the top of its module, not inside a function -- except in
  ``ldm_lite/cli.py``, whose commands import what they need when they run (a fast ``--help``), and the few
  entries of ``ALLOWED_IN_FUNCTION`` below, each with its reason;
* that a module imports only from its own unit (package or top-level module) or from a unit of a *lower*
  layer of ``LAYERS``. Units on the same layer do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ldm_lite"

# Lowest first; a unit may import only units of lower layers (and itself):
#   0  config, io, notices, progress           plumbing: devices and seeds, atomic files, one-time notices, bars
#      checks                                  the shared checks of values entering the package (torch only)
#   1  data, latents, train                    the offline datasets (and their registry); cached latents; the Trainer
#   2  exports                                 an exported checkpoint on disk: safetensors + JSON manifest
#   3  metrics                                 numbers from tensors and features (PSNR ... FID), shipped evaluators
#   4  autoencoder, unet, diffusion,           the paper's parts, independent of each other
#      conditioning
#   5  ldm_config                              LDMConfig: every setting of a latent diffusion model, checked once
#   6  ldm                                     the latent diffusion model (Sec. 3-4)
#   7  pretrained                              shipped models rebuilt from their exports
#   8  convert, experiments, viz,              CompVis / diffusers converters; training recipes; plotting; running
#      notebook_exec                           notebooks
#   9  evaluator_training, interactive         recipes for the evaluators; notebook widgets
#  10  cli                                     the command line
LAYERS = {
    "ldm_lite": 0,  # the package's __init__: re-exports device and seeds from config (its one import)
    "ldm_lite.config": 0,
    "ldm_lite.io": 0,
    "ldm_lite.notices": 0,
    "ldm_lite.progress": 0,
    "ldm_lite.checks": 0,
    "ldm_lite.data": 1,
    "ldm_lite.latents": 1,
    "ldm_lite.train": 1,
    "ldm_lite.exports": 2,
    "ldm_lite.metrics": 3,
    "ldm_lite.autoencoder": 4,
    "ldm_lite.unet": 4,
    "ldm_lite.diffusion": 4,
    "ldm_lite.conditioning": 4,
    "ldm_lite.ldm_config": 5,
    "ldm_lite.ldm": 6,
    "ldm_lite.pretrained": 7,
    "ldm_lite.convert": 8,
    "ldm_lite.experiments": 8,
    "ldm_lite.viz": 8,
    "ldm_lite.notebook_exec": 8,
    "ldm_lite.evaluator_training": 9,
    "ldm_lite.interactive": 9,
    "ldm_lite.cli": 10,
}

# Package-internal imports allowed inside a function: (importing module, imported module) -> reason.
ALLOWED_IN_FUNCTION: dict[tuple[str, str], str] = {}

IN_FUNCTION_OK = {"ldm_lite.cli"}  # imports at call time keep `ldm-lite --help` fast


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    p = PACKAGE.parent.joinpath(*module.split("."))
    return p.is_dir() or p.with_suffix(".py").is_file()


def _imports(path: Path):
    """(imported module, line, inside a function) for every package-internal import of the file at ``path``."""
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                targets = [source] + [f"{source}.{a.name}" for a in child.names if _exists(f"{source}.{a.name}")]
            for t in targets:
                if t == "ldm_lite" or t.startswith("ldm_lite."):
                    out.append((t, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return module, out


def _unit(module: str) -> str | None:
    """The LAYERS key ``module`` belongs to (the longest one that is it or a package above it)."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def _all_imports():
    return [_imports(p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_has_a_layer():
    missing = [m for m, _ in _all_imports() if _unit(m) in (None, "ldm_lite") and m != "ldm_lite"]
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"


def test_no_package_imports_inside_functions():
    bad = []
    for module, imports in _all_imports():
        if module in IN_FUNCTION_OK:
            continue
        for target, line, in_function in imports:
            if in_function and (module, target) not in ALLOWED_IN_FUNCTION:
                bad.append(f"{module}:{line} imports {target} inside a function")
    assert not bad, "package-internal imports belong at the top of the module:\n" + "\n".join(bad)


def test_imports_go_down_the_layers():
    bad = []
    for module, imports in _all_imports():
        unit = _unit(module)
        for target, line, _ in imports:
            other = _unit(target)
            if other is None or other == unit or target == "ldm_lite":  # the root package is loaded first anyway
                continue
            if LAYERS[other] > LAYERS[unit] or (LAYERS[other] == LAYERS[unit] and module != "ldm_lite"):
                bad.append(f"{module}:{line} (layer {LAYERS[unit]}) imports {target} (layer {LAYERS[other]})")
    assert not bad, "imports must go to a lower layer (LAYERS):\n" + "\n".join(bad)


def test_allow_list_is_short_and_current():
    assert len(ALLOWED_IN_FUNCTION) <= 4
    found = {(m, t) for m, imports in _all_imports() for t, _, f in imports if f}
    stale = set(ALLOWED_IN_FUNCTION) - found
    assert not stale, f"allow-list entries no longer needed: {sorted(stale)}"
