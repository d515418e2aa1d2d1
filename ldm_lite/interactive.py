"""Prompt in, picture out: the functions behind chapter 06's prompt box and chapter 07's map editor, and the widgets.

:func:`generate` is a plain function (the tests call it); :func:`prompt_widget` wires it to ipywidgets -- a text
box, a guidance slider, a seed and a button -- for JupyterLab. For semantic synthesis, a *scene* is a list of
objects ``{"shape", "cx", "cy", "r"}`` (pixels of the canvas): :func:`scene_segmentation` renders its label map,
:func:`edit_scene` moves, reshapes, adds or removes an object, :func:`generate_from_map` samples a semantic model;
:func:`map_editor` wires them to ipywidgets. Nothing here is specific to a notebook.
"""

from __future__ import annotations

import torch

__all__ = ["edit_scene", "generate", "generate_from_map", "map_editor", "prompt_widget", "scene_segmentation"]


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

    from ldm_lite.viz import show_grid

    text = W.Text(value=prompt, description="prompt", layout=W.Layout(width="560px"))
    scale = W.FloatSlider(value=guidance, min=1.0, max=10.0, step=0.5, description="guidance")
    seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
    button = W.Button(description="generate", button_style="primary")
    out = W.Output()

    def run(_=None):
        with out:
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
    from ldm_lite.data.shapes import SHAPES, ShapesDataset

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
    from ldm_lite.data.shapes import SHAPES

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

    from ldm_lite.data.shapes import SHAPES
    from ldm_lite.viz import show_grid

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
