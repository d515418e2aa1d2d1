"""Prompt in, picture out: the function behind chapter 06's prompt box, and the box itself.

:func:`generate` is a plain function (the tests call it); :func:`prompt_widget` wires it to ipywidgets -- a text
box, a guidance slider, a seed and a button -- for JupyterLab. Nothing here is specific to a notebook.
"""

from __future__ import annotations

import torch

__all__ = ["generate", "prompt_widget"]


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
