"""Every shipped model computes what it computed when ``tests/golden/`` was recorded (``python
tests/golden_outputs.py``): samples and a training loss of each LDM, reconstructions of each autoencoder, features of
each evaluator. On a machine like the recording one (same torch version and CPU capability) the float32 outputs must
be bit-identical; elsewhere, floating-point kernels may round differently, and they must agree to 2e-3."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import golden_outputs as g

META = json.loads((g.GOLDEN / "shipped_outputs.json").read_text())
STORED = np.load(g.GOLDEN / "shipped_outputs.npz")
SAME_MACHINE = g.machine() == {k: META[k] for k in ("torch", "cpu_capability")}
KINDS = {"ldm": g.ldm_outputs, "autoencoder": g.autoencoder_outputs, "evaluator": g.evaluator_outputs}


def test_the_record_covers_every_shipped_model():
    recorded = {k.split("/")[0] for k in META["sha256"]}
    assert recorded == {n for kind in KINDS for n in g.shipped(kind)}, \
        "a shipped model was added or removed: record tests/golden again (python tests/golden_outputs.py)"


@pytest.mark.parametrize("kind, name", [(k, n) for k in KINDS for n in g.shipped(k)])
def test_shipped_model_outputs_are_unchanged(kind, name):
    threads = torch.get_num_threads()
    torch.set_num_threads(META["threads"])
    try:
        out = KINDS[kind](name)
    finally:
        torch.set_num_threads(threads)
    for key, arr in out.items():
        full = f"{name}/{key}"
        assert list(arr.shape) == META["shapes"][full], full
        if SAME_MACHINE and full in META["sha256"]:  # (a value re-recorded on another machine has no sha256)
            assert g.sha(arr) == META["sha256"][full], f"{full} changed (not bit-identical to the record)"
        else:
            np.testing.assert_allclose(arr, STORED[full].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=full)
