"""Prompt in, picture out: the functions behind the course's interactive cells, and their widgets.

:func:`interact_figure` is ``ipywidgets.interact`` for a function that draws a figure (chapters 01 and 02): the
figure redraws when a control is released, and the function's return value is *not* displayed under it
(``interact`` would print it -- a long tensor repr under every figure). :func:`sampler_panel` is chapter 05's
"sampler, steps, eta, seed -> images" panel: while it samples, its button is disabled and a progress bar and a
label follow the steps (a 1000-step DDPM takes ~30 s on a laptop), and the images are shown at ``thumb`` px.

:func:`generate` is a plain function (the tests call it); :func:`prompt_widget` wires it to ipywidgets -- a text
box, a guidance slider, a seed and a button -- for JupyterLab. For semantic synthesis, a *scene* is a list of
objects ``{"shape", "cx", "cy", "r"}`` (pixels of the canvas): :func:`scene_segmentation` renders its label map,
:func:`edit_scene` moves, reshapes, adds or removes an object, :func:`generate_from_map` samples a semantic model;
:func:`map_editor` wires them to ipywidgets. Nothing here is specific to a notebook: every panel is returned, its
parts named in ``panel.parts``, so a script (or a test) can drive it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time

import torch

from ldm_lite.data.shapes import SHAPES, ShapesDataset
from ldm_lite.viz import make_grid, show_grid

__all__ = ["edit_scene", "generate", "generate_from_map", "grid_png", "interact_figure", "map_editor",
           "prompt_widget", "sampler_panel", "scene_segmentation"]


# ----------------------------------------------------------------------------- helpers for every panel
@contextlib.contextmanager
def busy(*controls, button=None, label: str | None = None):
    """Disable ``controls`` (and ``button``, relabelled ``label``) for the duration; restore them afterwards,
    also after an error (a control that was disabled before stays disabled)."""
    widgets = [w for w in (*controls, button) if w is not None]
    before = [w.disabled for w in widgets]
    description = button.description if button is not None else None
    for w in widgets:
        w.disabled = True
    if button is not None and label:
        button.description = label
    try:
        yield
    finally:
        for w, was in zip(widgets, before):
            w.disabled = was
        if button is not None:
            button.description = description


def grid_png(images: torch.Tensor, nrow: int | None = None, thumb: int = 128, pad: int = 2) -> tuple[bytes, int]:
    """(B, C, H, W) images in [-1, 1] as one PNG grid, each image enlarged (nearest neighbour, whole factors)
    to at least ``thumb`` px; returns ``(png_bytes, width_px)``. Shown at ``width_px`` (an ``ipywidgets.Image``
    with that width), every thumbnail is ``thumb`` px or more on screen."""
    import io

    import numpy as np
    from PIL import Image

    k = max(1, math.ceil(thumb / images.shape[-2]))
    grid = make_grid(images, nrow, pad=pad)
    grid = np.repeat(np.repeat(grid, k, axis=0), k, axis=1)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="png")
    return buf.getvalue(), grid.shape[1]


def interact_figure(fn, continuous_update: bool = False, **controls):
    """``ipywidgets.interact(fn, **controls)`` for a function that draws a figure: ``fn(**values)`` runs once now
    and again whenever a control changes; its output (the figure) replaces the previous one. Unlike ``interact``
    the return value is dropped -- ``interact`` displays it, a long tensor repr under the figure. Sliders update
    when released (``continuous_update=False``: a drag would queue a redraw per value passed). Displays the panel
    and returns it (an ``ipywidgets.interactive``; ``panel.parts`` names the controls and the output)."""
    import ipywidgets as W
    from IPython.display import display

    @functools.wraps(fn)
    def draw(*args, **kwargs):
        fn(*args, **kwargs)  # the return value is dropped on purpose (see above)

    for w in controls.values():
        if isinstance(w, W.Widget) and w.has_trait("continuous_update"):
            w.continuous_update = continuous_update
    panel = W.interactive(draw, **controls)
    panel.parts = {**{w._kwarg: w for w in panel.kwargs_widgets}, "out": panel.out}
    display(panel)
    return panel


def sampler_panel(generate, samplers=(("DDIM", "ddim"), ("PLMS", "plms"), ("DPM-Solver++(2M)", "dpm"),
                                      ("DDPM", "ddpm")), steps: int = 20, n: int = 8, nrow: int = 4,
                  thumb: int = 128, min_interval: float = 0.1):
    """Chapter 05's panel: sampler, steps, eta (DDIM only), seed, a "Generate" button, a progress bar and a
    label, and the images (``n`` in rows of ``nrow``, each shown at ``thumb`` px or more).

    ``generate(sampler, steps, eta, seed, n=n, callback=cb)`` returns ``images`` or ``(images, seconds)``; it
    should pass ``callback`` on to ``LatentDiffusion.sample`` (``cb(i, num_steps, x, pred_x0)`` after each step),
    which moves the bar (at most every ``min_interval`` s). A ``generate`` without a ``callback`` parameter still
    works; the bar then only says "running". While it runs the button and the controls are disabled (a click
    cannot queue a second run); they are enabled again afterwards, also after an error. A ``ValueError`` (a
    setting the model refuses) is shown in the label. Displays the panel and returns it (``panel.parts``).
    """
    import ipywidgets as W
    from IPython.display import display

    sampler_w = W.Dropdown(options=list(samplers), value=samplers[0][1], description="sampler")
    steps_w = W.IntSlider(value=steps, min=1, max=1000, step=1, description="steps", continuous_update=False)
    eta_w = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="η", continuous_update=False)
    seed_w = W.IntText(value=0, description="seed", layout=W.Layout(width="180px"))
    button = W.Button(description="Generate", button_style="primary", icon="play")
    bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px"))
    status = W.Label(value="press Generate")
    image = W.Image(format="png", layout=W.Layout(display="none"))
    out = W.Output()  # tracebacks of unexpected errors
    takes_callback = "callback" in inspect.signature(generate).parameters

    def on_sampler(change):
        eta_w.disabled = change["new"] != "ddim"
        if eta_w.disabled:
            eta_w.value = 0.0

    def run(_=None):
        if button.disabled:  # a click that arrived while a run was going
            return
        sampler, n_steps, eta, seed = sampler_w.value, steps_w.value, eta_w.value, seed_w.value
        name = sampler_w.label
        out.clear_output()
        bar.bar_style, bar.value, bar.max = "", 0, max(1, n_steps)
        t0 = time.perf_counter()
        last = [-math.inf]

        def on_step(i, num_steps, *_):
            now = time.perf_counter()
            if i == 0 or i + 1 >= num_steps or now - last[0] >= min_interval:
                last[0] = now
                bar.max, bar.value = num_steps, i + 1
                status.value = f"{name}: step {i + 1}/{num_steps}, {now - t0:.1f} s"

        status.value = f"{name}: {n_steps} steps, running" + ("" if takes_callback else " (no per-step progress)")
        kwargs = {"n": n, "callback": on_step} if takes_callback else {"n": n}
        result = None
        with busy(sampler_w, steps_w, eta_w, seed_w, button=button, label="Generating…"), out:
            try:
                result = generate(sampler, n_steps, eta, seed, **kwargs)
            except ValueError as err:
                bar.bar_style = "danger"
                status.value = f"✗ {err}"
                return
            except BaseException:
                bar.bar_style = "danger"
                status.value = "✗ failed (traceback below)"
                raise  # shown in `out` (inside IPython) and swallowed there; re-raised elsewhere
        if result is None:
            return
        images, secs = result if isinstance(result, tuple) else (result, time.perf_counter() - t0)
        png, width = grid_png(images, nrow, thumb)
        image.value = png
        image.layout.width, image.layout.display = f"{width}px", ""
        bar.bar_style, bar.value = "success", bar.max
        status.value = f"{name}, {n_steps} steps, η={eta:g}, seed {seed}: {len(images)} images in {secs:.1f} s"

    sampler_w.observe(on_sampler, names="value")
    on_sampler({"new": sampler_w.value})
    button.on_click(run)
    panel = W.VBox([W.HBox([sampler_w, steps_w]), W.HBox([eta_w, seed_w, button]), W.HBox([bar, status]), image,
                    out])
    panel.parts = {"sampler": sampler_w, "steps": steps_w, "eta": eta_w, "seed": seed_w, "button": button,
                   "progress": bar, "status": status, "image": image, "out": out, "run": run}
    display(panel)
    return panel


@torch.no_grad()
def generate(model, prompt: str, guidance: float = 3.0, seed: int = 0, n: int = 4, steps: int = 25,
             sampler: str = "ddim") -> torch.Tensor:
    """``n`` images for one caption from a text-conditional :class:`~ldm_lite.ldm.LatentDiffusion`.

    Returns ``(n, 3, H, W)`` in [-1, 1]; the same ``(prompt, guidance, seed, n, steps)`` gives the same images.
    Errors name the fix: an empty prompt, a prompt too long for the text encoder, a model that takes no text.
    """
    if getattr(model, "cond_key", None) != "caption" or model.conditioning_key not in ("crossattn", "hybrid"):
        raise ValueError(f"this model is conditioned on {getattr(model, 'cond_key', None)!r}, not on a caption: "
                         "load a text-to-image model (e.g. load_ldm('ldm_shapes_text64'))")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("write a prompt, e.g. 'a big red circle left of a small blue square' (an empty prompt is "
                         "the null condition: use guidance=1 and cond=None for unconditional samples)")
    if not 0.0 <= float(guidance) <= 30.0:
        raise ValueError(f"guidance must lie in [0, 30], got {guidance}")
    if not isinstance(n, int) or not 1 <= n <= 64 or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"n must be 1..64 and steps 1..1000, got n={n!r}, steps={steps!r}")
    model.get_learned_conditioning([prompt])  # a prompt the encoder cannot take fails here, before sampling
    gen = torch.Generator().manual_seed(int(seed))
    return model.sample(n, cond=[prompt], guidance_scale=float(guidance), steps=steps, sampler=sampler,
                        generator=gen, progress=False)


def prompt_widget(model, prompt: str = "a big red circle left of a small blue square", guidance: float = 3.0,
                  n: int = 4, steps: int = 25):
    """An ipywidgets box: prompt, guidance slider, seed, "generate" button and the images below them."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    text = W.Text(value=prompt, description="prompt", layout=W.Layout(width="560px"))
    scale = W.FloatSlider(value=guidance, min=1.0, max=10.0, step=0.5, description="guidance")
    seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
    button = W.Button(description="generate", button_style="primary")
    out = W.Output()

    def run(_=None):
        if button.disabled:  # a click that arrived while a run was going
            return
        with out, busy(text, scale, seed, button=button, label="generating…"):
            out.clear_output(wait=True)
            try:
                images = generate(model, text.value, scale.value, seed.value, n=n, steps=steps)
            except ValueError as err:
                print(f"✗ {err}")
                return
            fig, ax = plt.subplots(figsize=(2.2 * n, 2.4))
            show_grid(images, nrow=n, ax=ax, title=f"{text.value!r}, guidance {scale.value:g}, seed {seed.value}")
            plt.show()

    button.on_click(run)
    box = W.VBox([text, W.HBox([scale, seed, button]), out])
    display(box)
    return box


# ----------------------------------------------------------------------------- semantic maps (chapter 07)
def scene_segmentation(objects, size: int = 64) -> torch.Tensor:
    """The label map (H, W) int64 of a scene: 0 background, 1 + shape class where an object covers at least half
    a pixel (as ShapesDataset's ``segmentation``); later objects are drawn over earlier ones."""
    canvas = ShapesDataset(size, length=1)
    seg = torch.zeros(size, size, dtype=torch.long)
    for o in objects:
        if o.get("shape") not in SHAPES:
            raise ValueError(f"unknown shape {o.get('shape')!r}; use one of {SHAPES}")
        if not (0 < float(o["r"]) < size / 2):
            raise ValueError(f"radius {o['r']} must lie in (0, {size / 2}) px on a {size} px canvas")
        _, (cov,) = canvas.render([dict(o, color="red")])
        seg[torch.from_numpy(cov >= 0.5)] = 1 + SHAPES.index(o["shape"])
    return seg


def edit_scene(objects, op: str, index: int | None = None, **kw) -> list[dict]:
    """A new scene with one edit (the input is not changed):

    * ``op="move", index, dx, dy`` -- shift object ``index`` by (dx, dy) px;
    * ``op="reshape", index, shape`` -- give it another shape;
    * ``op="add", shape, cx, cy, r`` -- add an object;
    * ``op="remove", index`` -- delete it.
    """
    scene = [dict(o) for o in objects]
    if op in ("move", "reshape", "remove") and (index is None or not 0 <= index < len(scene)):
        raise ValueError(f"index must name one of the {len(scene)} objects (0..{len(scene) - 1}), got {index!r}")
    if op == "move":
        scene[index]["cx"] += float(kw.get("dx", 0))
        scene[index]["cy"] += float(kw.get("dy", 0))
    elif op == "reshape":
        if kw.get("shape") not in SHAPES:
            raise ValueError(f"unknown shape {kw.get('shape')!r}; use one of {SHAPES}")
        scene[index]["shape"] = kw["shape"]
    elif op == "add":
        missing = {"shape", "cx", "cy", "r"} - set(kw)
        if missing:
            raise ValueError(f"op='add' needs shape, cx, cy and r; missing {sorted(missing)}")
        scene.append({k: kw[k] for k in ("shape", "cx", "cy", "r")})
    elif op == "remove":
        scene.pop(index)
    else:
        raise ValueError(f"unknown edit {op!r}; use 'move', 'reshape', 'add' or 'remove'")
    return scene


@torch.no_grad()
def generate_from_map(model, segmentation: torch.Tensor, seed: int = 0, n: int = 4, steps: int = 25) -> torch.Tensor:
    """``n`` images for one label map (H, W) from a semantic-synthesis LDM (``train-ldm --task semantic``); a map
    larger than the training size gives a larger image (the UNet is convolutional)."""
    if getattr(model, "cond_key", None) != "segmentation":
        raise ValueError(f"this model is conditioned on {getattr(model, 'cond_key', None)!r}, not on a segmentation "
                         "map: load a semantic-synthesis model (ldm-lite train-ldm --task semantic)")
    seg = torch.as_tensor(segmentation)
    if seg.ndim != 2:
        raise ValueError(f"give one label map (H, W), got shape {tuple(seg.shape)}")
    f = model.f * model.unet.downsampling_factor
    if seg.shape[0] % f or seg.shape[1] % f:
        raise ValueError(f"the map is {seg.shape[1]}×{seg.shape[0]} px; this model needs multiples of {f}")
    gen = torch.Generator().manual_seed(int(seed))
    return model.sample(cond=seg[None].expand(n, -1, -1), steps=steps, generator=gen, progress=False)


def map_editor(model, objects, size: int = 64, n: int = 4, steps: int = 25):
    """An ipywidgets editor: pick an object, move it, change its shape, add or remove one; the map and the images
    generated from it update on "generate"."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    state = {"scene": [dict(o) for o in objects]}
    pick = W.IntSlider(value=0, min=0, max=max(len(objects) - 1, 0), description="object")
    dx = W.IntSlider(value=0, min=-size // 2, max=size // 2, description="move x")
    dy = W.IntSlider(value=0, min=-size // 2, max=size // 2, description="move y")
    shape = W.Dropdown(options=SHAPES, description="shape")
    buttons = {name: W.Button(description=name) for name in ("move", "reshape", "add", "remove")}
    go = W.Button(description="generate", button_style="primary")
    seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
    out = W.Output()

    def show(images=None):
        with out:
            out.clear_output(wait=True)
            seg = scene_segmentation(state["scene"], size)
            fig, axes = plt.subplots(1, 2, figsize=(2.4 * (n + 1), 2.6), gridspec_kw={"width_ratios": [1, n]})
            axes[0].imshow(seg.numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            axes[0].set_title("map", fontsize=9)
            axes[0].set_axis_off()
            if images is not None:
                show_grid(images, nrow=n, ax=axes[1], title=f"seed {seed.value}")
            else:
                axes[1].set_axis_off()
            plt.show()

    def edit(op):
        def run(_=None):
            try:
                if op == "add":
                    state["scene"] = edit_scene(state["scene"], "add", shape=shape.value, cx=size / 2, cy=size / 2,
                                                r=size / 8)
                else:
                    state["scene"] = edit_scene(state["scene"], op, pick.value, dx=dx.value, dy=dy.value,
                                                shape=shape.value)
            except ValueError as err:
                with out:
                    print(f"✗ {err}")
                return
            pick.max = max(len(state["scene"]) - 1, 0)
            show()
        return run

    for name, b in buttons.items():
        b.on_click(edit(name))

    def generate_now(_=None):
        go.disabled = True
        try:
            show(generate_from_map(model, scene_segmentation(state["scene"], size), seed.value, n=n, steps=steps))
        finally:
            go.disabled = False

    go.on_click(generate_now)
    box = W.VBox([W.HBox([pick, shape]), W.HBox([dx, dy]), W.HBox(list(buttons.values()) + [seed, go]), out])
    display(box)
    show()
    return box
