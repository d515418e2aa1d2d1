"""The notebook runner's kernel client cannot miss a reply whose ZeroMQ wake-up was consumed by a send on the
same socket (the nbclient stall; ldm_lite/notebook_exec.py explains)."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ldm_lite import notebook_exec
from ldm_lite.notebook_exec import PatientKernelClient, PatientKernelManager, _PatientChannel


async def _reply_while_client_sends(timeout: float, lose_wakeup: bool = True):
    """A kernel-like ROUTER answers a request; while the answer arrives the client sends on its own socket (as
    nbclient does for an Output widget) in the same event-loop tick. Returns (message type or "Empty", seconds)."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    session = Session()
    channel = _PatientChannel(dealer, session)
    session.send(dealer, session.msg("execute_request", content={}))
    ident, *request = await router.recv_multipart()

    async def kernel():
        await asyncio.sleep(0.2)
        zmq.Socket.shadow(router.underlying).send_multipart([ident, *request])  # the "reply"
        if lose_wakeup:
            time.sleep(0.05)  # the client's loop is busy while the reply lands in its socket ...
            session.send(dealer, session.msg("comm_msg", content={}))  # ... then it sends: the wake-up is consumed

    task = asyncio.ensure_future(kernel())
    t0 = time.perf_counter()
    try:
        got = (await channel.get_msg(timeout=timeout))["msg_type"]
    except Empty:
        got = "Empty"
    await task
    dealer.close(0)
    router.close(0)
    ctx.term()
    return got, time.perf_counter() - t0


def test_a_reply_whose_wakeup_was_lost_is_found_within_a_poll_slice():
    got, seconds = asyncio.run(_reply_while_client_sends(timeout=6.0))
    assert got == "execute_request", got
    # jupyter_client's own channel waits out the whole timeout here (6 s; 150 s per cell in the notebook tests)
    assert seconds < notebook_exec.POLL_SLICE_S + 1.5, f"the reply took {seconds:.1f} s to be noticed"


def test_patient_channel_still_times_out_and_delivers_normally():
    got, seconds = asyncio.run(_reply_while_client_sends(timeout=6.0, lose_wakeup=False))
    assert got == "execute_request" and seconds < 1.0

    async def nothing():
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect("tcp://127.0.0.1:9")  # nobody answers
        t0 = time.perf_counter()
        with pytest.raises(Empty):
            await _PatientChannel(sock, Session()).get_msg(timeout=1.5)
        sock.close(0)
        ctx.term()
        return time.perf_counter() - t0

    assert 1.4 <= asyncio.run(nothing()) < 3.0


def test_the_runner_uses_the_patient_client_on_both_channels():
    assert PatientKernelManager().client_factory is PatientKernelClient
    kc = PatientKernelClient()
    assert kc.shell_channel_class is _PatientChannel and kc.iopub_channel_class is _PatientChannel


def test_saved_outputs_show_no_machine_paths_and_no_raw_widget_reprs(tmp_path):
    import nbformat

    from ldm_lite.notebook_exec import WIDGET_NOTE, tidy_outputs

    root, home = tmp_path / "repo", "/home/learner"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr",
                               text=f"{root}/ldm_lite/metrics/quality.py:32: FeatureSubstituteWarning: ... weights at "
                                    f"{home}/.cache/torch/hub/checkpoints/vgg16.pth\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "VBox(children=(IntSlider(value=0),))",
                                                     "application/vnd.jupyter.widget-view+json": {"model_id": "a"}}),
        nbformat.v4.new_output("execute_result", data={"text/plain": "0.5"}, execution_count=1),
        nbformat.v4.new_output("stream", name="stderr", text="/tmp/ipykernel_24356/3043298373.py:43: Warning: w\n"),
    ])])
    assert tidy_outputs(nb, root, home) == 3
    outs = nb.cells[0].outputs
    assert outs[0].text.startswith("ldm_lite/metrics/quality.py:32:") and "~/.cache/torch/hub" in outs[0].text
    assert str(root) not in outs[0].text and home not in outs[0].text
    assert outs[1].data["text/plain"] == WIDGET_NOTE and "model_id" in str(outs[1].data)
    assert outs[2].data["text/plain"] == "0.5"  # results are never touched
    assert outs[3].text == "<cell>:43: Warning: w\n"  # the kernel's temporary file of the cell
