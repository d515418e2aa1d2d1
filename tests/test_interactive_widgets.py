"""The notebooks' widgets driven from Python, no browser.

* ``interact_figure`` (chapters 01, 02): redraws on a change and never displays the function's return value
  (``ipywidgets.interact`` does: a long tensor repr under the figure);
* ``sampler_panel`` (chapter 05): the button is disabled while sampling, a progress bar and a label follow the
  steps, everything is enabled again afterwards (also after an error), thumbnails are >= 96 px;
* ``ldm_lite.progress``: a notebook widget bar re-sends its output on close, so a saved notebook shows the final
  count instead of ``0/N``.
"""

from __future__ import annotations

import io

import pytest
import torch

W = pytest.importorskip("ipywidgets")


def _fake_images(n: int = 8, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


# ----------------------------------------------------------------------------- interact_figure
def test_interact_figure_redraws_and_never_displays_the_return_value(capsys):
    from ldm_lite.interactive import interact_figure

    calls = []

    def show(index: int = 0, f: int = 4):
        calls.append((index, f))
        return torch.zeros(500)  # what 01's show_reconstruction / 02's show_noising return

    index = W.IntSlider(0, 0, 3)
    f = W.SelectionSlider(options=[1, 2, 4, 8], value=4)
    panel = interact_figure(show, index=index, f=f)
    assert calls == [(0, 4)]  # drawn once when shown
    index.value = 2
    f.value = 8
    assert calls == [(0, 4), (2, 4), (2, 8)]
    assert panel.result is None
    assert panel.parts["index"] is index and panel.parts["f"] is f and panel.parts["out"] is panel.out
    assert not index.continuous_update and not f.continuous_update  # redraw on release, not per value dragged
    assert "tensor(" not in capsys.readouterr().out

    # the same function under ipywidgets.interact's settings prints the tensor: the check above can fail
    W.interactive(show, {"auto_display": True}, index=W.IntSlider(0, 0, 3))
    assert "tensor(" in capsys.readouterr().out


# ----------------------------------------------------------------------------- sampler_panel
class FakeGenerate:
    """Stands in for chapter 05's ``generate``: records what the panel looks like at each step."""

    def __init__(self, panel_ref, fail: Exception | None = None):
        self.panel_ref, self.fail, self.seen, self.args = panel_ref, fail, [], None

    def __call__(self, sampler="ddim", steps=20, eta=0.0, seed=0, n=8, callback=None):
        parts = self.panel_ref[0].parts
        self.args = (sampler, steps, eta, seed, n)
        for i in range(steps):
            if callback is not None:
                callback(i, steps, None, None)
            self.seen.append({"disabled": parts["button"].disabled, "steps_disabled": parts["steps"].disabled,
                              "description": parts["button"].description, "bar": parts["progress"].value,
                              "status": parts["status"].value})
            if self.fail is not None and i == 1:
                raise self.fail
        return _fake_images(n), 1.25


def _panel(fail=None, **kwargs):
    from ldm_lite.interactive import sampler_panel

    ref = []
    gen = FakeGenerate(ref, fail)
    ref.append(sampler_panel(gen, **kwargs))
    return ref[0], gen


def test_sampler_panel_disables_the_button_and_shows_progress_while_sampling():
    from PIL import Image

    panel, gen = _panel(min_interval=0.0)
    p = panel.parts
    p["sampler"].value, p["steps"].value, p["seed"].value = "ddpm", 5, 3
    assert p["eta"].disabled  # eta is DDIM's
    p["button"].click()
    assert gen.args == ("ddpm", 5, 0.0, 3, 8)
    assert all(s["disabled"] and s["steps_disabled"] for s in gen.seen)  # disabled for the whole run
    assert {s["description"] for s in gen.seen} == {"Generating…"}
    assert [s["bar"] for s in gen.seen] == [1, 2, 3, 4, 5]  # the bar advances step by step
    assert gen.seen[2]["status"].startswith("DDPM: step 3/5")
    # enabled again afterwards; eta stays disabled (it was before the run: DDPM)
    assert not p["button"].disabled and not p["steps"].disabled and p["eta"].disabled
    assert p["button"].description == "Generate"
    assert p["progress"].value == p["progress"].max == 5 and p["progress"].bar_style == "success"
    assert p["status"].value == "DDPM, 5 steps, η=0, seed 3: 8 images in 1.2 s"
    png = Image.open(io.BytesIO(p["image"].value))
    assert p["image"].layout.width == f"{png.width}px" and p["image"].layout.display == ""
    per_image = png.width / 4  # nrow=4 thumbnails per row
    assert per_image >= 96 and png.height / 2 >= 96  # 8 images: 2 rows of 4, each >= 96 px on screen


def test_sampler_panel_rate_limits_the_bar_and_survives_errors():
    panel, gen = _panel(min_interval=60.0)
    p = panel.parts
    p["steps"].value = 6
    p["button"].click()
    assert [s["bar"] for s in gen.seen] == [1, 1, 1, 1, 1, 6]  # first step, then only the last (rate limit)

    panel, gen = _panel(fail=ValueError("eta applies to DDIM only"))
    p = panel.parts
    p["button"].click()
    assert gen.seen[0]["disabled"]
    assert not p["button"].disabled and not p["eta"].disabled and p["button"].description == "Generate"
    assert p["status"].value == "✗ eta applies to DDIM only" and p["progress"].bar_style == "danger"
    assert p["image"].value == b""  # nothing shown

    panel, gen = _panel(fail=RuntimeError("boom"))  # ipywidgets logs the exception; the panel must recover
    p = panel.parts
    p["button"].click()
    assert not p["button"].disabled and not p["steps"].disabled and p["status"].value.startswith("✗")


def test_sampler_panel_without_a_callback_parameter_still_runs():
    from ldm_lite.interactive import sampler_panel

    def generate(sampler, steps, eta, seed, n=8):
        return _fake_images(n)

    panel = sampler_panel(generate)
    panel.parts["button"].click()
    assert panel.parts["status"].value.startswith("DDIM, 20 steps") and panel.parts["image"].value


def test_sampler_panel_with_the_shipped_ldm_moves_the_bar_per_sampler_step():
    """Chapter 05's generate, with the callback passed on to LatentDiffusion.sample (the recommended cell)."""
    from ldm_lite.interactive import sampler_panel
    from ldm_lite.pretrained import load_ldm

    try:
        ldm = load_ldm("ldm_openmoji64")
    except FileNotFoundError as err:  # pragma: no cover - the shipped weights are part of the repository
        pytest.skip(str(err))
    values = []

    def generate(sampler="ddim", steps=20, eta=0.0, seed=0, n=8, callback=None):
        images = ldm.sample(n, sampler=sampler, steps=steps, eta=eta, generator=torch.Generator().manual_seed(seed),
                            progress=False, callback=callback)
        return images, 0.0

    panel = sampler_panel(generate, n=2, nrow=2, min_interval=0.0)
    panel.parts["progress"].observe(lambda ch: values.append(ch["new"]), names="value")
    panel.parts["steps"].value = 3
    panel.parts["button"].click()
    assert values == [1, 2, 3]  # one move per sampler step
    assert panel.parts["progress"].value == 3 and not panel.parts["button"].disabled


def test_busy_restores_disabled_states_after_an_error():
    from ldm_lite.interactive import busy

    a, b, button = W.IntSlider(), W.IntSlider(disabled=True), W.Button(description="go")
    with pytest.raises(RuntimeError), busy(a, b, button=button, label="running"):
        assert a.disabled and b.disabled and button.disabled and button.description == "running"
        raise RuntimeError
    assert not a.disabled and b.disabled and not button.disabled and button.description == "go"


def test_prompt_widget_disables_its_button_while_generating(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from ldm_lite import interactive

    seen = []

    def fake_generate(model, prompt, guidance, seed, n=4, steps=25):
        box = boxes[0]
        button = box.children[1].children[2]
        seen.append((button.disabled, button.description, box.children[0].disabled))
        return _fake_images(n, 16)

    boxes = []
    monkeypatch.setattr(interactive, "generate", fake_generate)
    boxes.append(interactive.prompt_widget(model=None, n=2))
    button = boxes[0].children[1].children[2]
    button.click()
    assert seen == [(True, "generating…", True)]
    assert not button.disabled and button.description == "generate" and not boxes[0].children[0].disabled


# ----------------------------------------------------------------------------- progress bars (item 8)
class FakeHandle:
    def __init__(self, obj):
        self.shown, self.updates = obj, []

    def update(self, obj, raw=False):
        self.updates.append(obj)


@pytest.fixture
def notebook_tqdm(monkeypatch):
    """Make ``tqdm.auto`` pick the widget bar (as in a Jupyter kernel) and capture ``display`` calls."""
    import IPython.display
    import tqdm.auto
    import tqdm.notebook

    handles = []

    def fake_display(obj, display_id=None, **kwargs):
        assert display_id is True, "the bar must be displayed with a display id (to be re-sent on close)"
        handles.append(FakeHandle(obj))
        return handles[-1]

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)
    monkeypatch.setattr(IPython.display, "display", fake_display)
    monkeypatch.setenv("LDM_PROGRESS", "auto")
    return handles


def test_notebook_bar_is_resent_on_close_with_its_final_count(notebook_tqdm):
    from ldm_lite.progress import progress

    bar = progress(range(1500), desc="train")
    for i in bar:
        if i % 500 == 0:
            bar.set_postfix(loss="0.07", refresh=False)
    bar.close()
    (handle,) = notebook_tqdm  # displayed once, when created (at 0/1500) ...
    (final,) = handle.updates  # ... and re-sent once, on close
    assert "train: 100%" in final["text/plain"] and "1500/1500" in final["text/plain"] and "loss=0.07" in final[
        "text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in final  # still the live widget in JupyterLab


def test_notebook_bar_stopped_early_or_transient(notebook_tqdm):
    from ldm_lite.progress import progress

    bar = progress(range(10), desc="train")
    for i in bar:
        if i == 3:
            break
    bar.close()
    bar.close()  # closing twice re-sends nothing more
    assert len(notebook_tqdm[0].updates) == 1 and "3/10" in notebook_tqdm[0].updates[0]["text/plain"]

    for _ in progress(range(4), desc="sampling", leave=False):
        pass
    assert notebook_tqdm[1].updates == [{"text/plain": ""}]  # a finished transient bar leaves no frozen copy

    progress(range(4), disable=True).close()  # a disabled bar displays nothing
    assert len(notebook_tqdm) == 2


def test_progress_modes_pick_their_bars(monkeypatch, capsys):
    from tqdm.std import tqdm as std_tqdm

    from ldm_lite import progress as P

    monkeypatch.setenv("LDM_PROGRESS", "auto")
    bar = P.progress(range(2), file=io.StringIO())  # outside a notebook: tqdm.auto's terminal bar
    assert isinstance(bar, std_tqdm) and not hasattr(bar, "_handle")
    bar.close()
    monkeypatch.setenv("LDM_PROGRESS", "summary")
    P.write("step 5: held-out PSNR 30.00 dB")
    assert capsys.readouterr().out == "step 5: held-out PSNR 30.00 dB\n"
