"""Progress bars that read correctly live *and* in committed notebook outputs.

Live -- JupyterLab, a terminal, a script -- every long loop shows ``tqdm.auto``'s bar (a widget in a
notebook, text in a terminal). A notebook executed non-interactively to commit its outputs is different:
the widget's updates are never saved, so the committed output shows the bar frozen at ``0/N``. With
``LDM_PROGRESS=summary`` (what ``ldm-lite execute-notebook`` sets) a bar prints nothing while it runs and
one line when it closes -- ``train: 1500/1500 in 212 s (loss/ldm=0.071)`` -- and transient bars
(``leave=False``: sampling, encoding) print nothing at all. ``LDM_PROGRESS=off`` silences every bar.

Why a widget bar is frozen at ``0/N`` in a saved notebook: ``tqdm.notebook`` displays its widget once, and that
``display_data`` carries, besides the widget view, a ``text/plain`` copy of the bar *as it was then* (``0/N``);
every later update goes to the widget's model as a comm message, never to the output. Renderers without the
widget's state (GitHub, nbviewer, nbconvert) show the ``text/plain`` copy. So in ``auto`` mode a notebook bar here
is displayed with a display id and re-sent when it closes: the saved ``text/plain`` reads the final count
(``train: 100%|██████████| 1500/1500 ...``, or where it stopped), and a transient bar leaves an empty output
instead of a frozen one. Widget updates are cheap: 1,500 iterations with ``set_postfix`` each send ~1,600 small
comm messages, which nbclient handles in ~30 ms in total (measured), so no rate limit
beyond tqdm's own ``mininterval`` is needed.
"""

from __future__ import annotations

import io
import os
import sys

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

    notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto only when it chose the widget bar
    if notebook is not None and isinstance(tqdm, type) and issubclass(tqdm, notebook.tqdm_notebook):
        return _lasting_notebook_bar()(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


def write(message: str) -> None:
    """Print a line next to running bars: ``tqdm.write`` in ``auto`` mode (it does not break a terminal bar),
    ``print`` otherwise. Use it instead of importing ``tqdm.auto`` for its ``write``."""
    if mode() == "auto":
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)


_NOTEBOOK_BAR = None


def _lasting_notebook_bar():
    """The notebook widget bar, displayed with a display id and re-sent on close (class made once, lazily:
    importing ``tqdm.notebook`` imports ipywidgets)."""
    global _NOTEBOOK_BAR
    if _NOTEBOOK_BAR is not None:
        return _NOTEBOOK_BAR
    from tqdm.notebook import tqdm_notebook

    class LastingNotebookBar(tqdm_notebook):
        """``tqdm.notebook.tqdm`` whose saved ``text/plain`` shows the final count, not ``0/N`` (module docstring)."""

        def __init__(self, *args, **kwargs):
            self._handle = None
            kwargs["display"] = False  # displayed below, with a display id
            super().__init__(*args, **kwargs)
            if not self.disable and self.delay <= 0:
                self._show()

        def _show(self):
            from IPython.display import display

            self._handle = display(self.container, display_id=True)  # None outside IPython
            self.displayed = True

        def display(self, *args, check_delay=True, **kwargs):
            super().display(*args, check_delay=False, **kwargs)
            if check_delay and self.delay > 0 and not self.displayed:
                self._show()

        def close(self):
            if self.disable:  # disabled, or closed already
                return super().close()
            super().close()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is None:
                return
            if self.leave or (self.total and self.n < self.total):  # kept, or stopped early: show where
                bundle = dict(self.container._repr_mimebundle_() or {})
                bundle["text/plain"] = self.container.__repr__(True)  # in full (ipywidgets cuts it at 110)
                handle.update(bundle, raw=True)
            else:  # a finished transient bar: nothing, rather than a bar frozen at 0/N
                handle.update({"text/plain": ""}, raw=True)

    _NOTEBOOK_BAR = LastingNotebookBar
    return _NOTEBOOK_BAR
