"""Progress bars that read correctly live *and* in committed notebook outputs (DESIGN §6, §9).

Live -- JupyterLab, a terminal, a script -- every long loop shows ``tqdm.auto``'s bar (a widget in a
notebook, text in a terminal). A notebook executed non-interactively to commit its outputs is different:
the widget's updates are never saved, so the committed output shows the bar frozen at ``0/N``. With
``LDM_PROGRESS=summary`` (what ``ldm-lite execute-notebook`` sets) a bar prints nothing while it runs and
one line when it closes -- ``train: 1500/1500 in 212 s (loss/ldm=0.071)`` -- and transient bars
(``leave=False``: sampling, encoding) print nothing at all. ``LDM_PROGRESS=off`` silences every bar.
"""

from __future__ import annotations

import io
import os

from tqdm.std import tqdm as _std_tqdm

MODES = ("auto", "summary", "off")


def mode() -> str:
    value = os.environ.get("LDM_PROGRESS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"LDM_PROGRESS={value!r}: use one of {MODES}")
    return value


class _SummaryBar(_std_tqdm):
    """A tqdm that counts silently (into a buffer) and prints one summary line when it closes."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        self._print_summary = kwargs.get("leave", True) and not kwargs.get("disable", False)
        super().__init__(*args, **kwargs)

    def close(self):
        if getattr(self, "_print_summary", False):
            self._print_summary = False
            total = f"/{self.total}" if self.total is not None else ""
            elapsed = self.format_dict["elapsed"]
            post = f" ({self.postfix})" if self.postfix else ""
            desc = self.desc.rstrip(": ") or "progress"
            print(f"{desc}: {self.n}{total} in {elapsed:.0f} s{post}", flush=True)
        super().close()


def progress(iterable=None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, or its summary / silent form (see the module docstring)."""
    m = mode()
    if m == "off":
        kwargs["disable"] = True
    if m == "summary":
        return _SummaryBar(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
