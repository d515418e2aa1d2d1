"""Headless notebook execution that cannot stall on a lost ZeroMQ wake-up (``ldm-lite execute-notebook`` and
the notebook tests use it).

The stall it prevents: nbclient waits for a cell's ``execute_reply`` with
``await socket.poll(timeout)`` on the shell socket. When a cell displays an ``ipywidgets.Output`` widget (every
``interact``), nbclient also *sends* on that socket -- it mirrors the widget's captured outputs back to the kernel
as a ``comm_msg`` -- and a send on a ZeroMQ socket processes its pending commands, which can consume the
edge-triggered "readable" notification of a reply that arrived at the same moment. The reply then sits in the
socket while the poll waits for an edge that never comes: kernel and client both idle, until the cell timeout.
(jupyter_client's ``Session.send`` sends on a plain shadow of the asyncio socket, so ``zmq.asyncio`` never learns
that it must look again.) Measured here: notebook 02 at smoke scale stalled in its ``interact`` cell in 4 of about
10 runs on a busy machine (ipykernel 7.4, jupyter_client 8.10, pyzmq 27.3); a new connection to the stalled kernel
was answered at once while the stalled client did not move, so the reply was stuck on the client's side. The
stall ends only when the cell's timeout runs out -- the poll then finds the reply after all -- or, with a long
timeout, looks like a hang. ``tests/test_notebook_exec.py`` reproduces it in a few lines.

The fix: poll in slices of at most ``POLL_SLICE_S`` seconds. When a slice ends, the socket's own event flags are
read (``ZMQ_EVENTS``), and they report the message whose wake-up was lost: it is delivered within one slice.
"""

from __future__ import annotations

import json
import os
import re
import time
import typing as t
from pathlib import Path
from queue import Empty

import zmq
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

__all__ = ["PatientKernelManager", "notebook_client", "POLL_SLICE_S", "tidy_outputs"]

POLL_SLICE_S = 1.0


class _PatientChannel(AsyncZMQSocketChannel):
    async def get_msg(self, timeout: float | None = None) -> dict[str, t.Any]:  # type: ignore[override]
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else max(0.0, min(POLL_SLICE_S, deadline - time.monotonic()))
            # a poll that times out reads the socket's own event flags (ZMQ_EVENTS) before it returns, and those
            # report a message whose wake-up was lost; the explicit check below says so in code as well
            if await self.socket.poll(int(left * 1000)) or self.socket.get(zmq.EVENTS) & zmq.POLLIN:
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class PatientKernelClient(AsyncKernelClient):
    shell_channel_class = Type(_PatientChannel)
    iopub_channel_class = Type(_PatientChannel)


class PatientKernelManager(AsyncKernelManager):
    client_class = DottedObjectName("ldm_lite.notebook_exec.PatientKernelClient")
    client_factory = Type(klass=PatientKernelClient)


def notebook_client(nb, **kwargs):
    """An ``nbclient.NotebookClient`` for ``nb`` whose kernel client cannot miss a reply (see the module doc)."""
    from nbclient import NotebookClient

    return NotebookClient(nb, kernel_manager_class=PatientKernelManager, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# What a reader of the saved notebook sees: no machine paths, no raw widget reprs
# ------------------------------------------------------------------------------------------------------------
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("[an interactive widget (ipywidgets): its controls appear when this cell runs in Jupyter; the saved "
               "notebook keeps only this note]")


_KERNEL_CELL = re.compile(r"/tmp/ipykernel_\d+/\d+\.py:(\d+)")  # where a warning raised in a cell points


def _tidy_text(text: str, root: str, home: str) -> str:
    """Paths inside the repository become relative to it (``ldm_lite/metrics/quality.py``), the home folder ``~``,
    and the kernel's temporary file of a cell (``/tmp/ipykernel_123/456.py:43``) ``<cell>:43``."""
    text = _KERNEL_CELL.sub(r"<cell>:\1", text)
    if root:
        text = text.replace(root.rstrip("/") + "/", "")
    if home and home != "/":
        text = text.replace(home.rstrip("/") + "/", "~/")
    return text


def tidy_outputs(nb, root: str | os.PathLike, home: str | os.PathLike | None = None) -> int:
    """Make a notebook's saved outputs readable on any machine, in place; returns how many outputs changed.

    * the plain-text fallback of a widget (``VBox(children=(...))``, all a reader without the kernel sees) becomes
      a short note saying what the cell shows when run;
    * absolute paths under ``root`` (the repository) are written relative to it -- a warning names
      ``ldm_lite/metrics/quality.py:32``, not this machine's checkout -- and paths under ``home`` start with ``~``.
    Nothing else is touched: numbers, figures and the order of outputs stay as they were computed.
    """
    root = str(Path(root).resolve())
    home = str(Path(home if home is not None else Path.home()))
    changed = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            before = json.dumps(out, sort_keys=True)
            data = out.get("data")
            if isinstance(data, dict) and WIDGET_MIME in data and "text/plain" in data:
                data["text/plain"] = WIDGET_NOTE
            if isinstance(out.get("text"), (str, list)):
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                out["text"] = _tidy_text(text, root, home)
            if isinstance(data, dict) and isinstance(data.get("text/plain"), (str, list)):
                plain = data["text/plain"] if isinstance(data["text/plain"], str) else "".join(data["text/plain"])
                data["text/plain"] = _tidy_text(plain, root, home)
            if out.get("output_type") == "error":
                out["traceback"] = [_tidy_text(t, root, home) for t in out.get("traceback", [])]
            changed += json.dumps(out, sort_keys=True) != before
    return changed
