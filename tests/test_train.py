"""Tests for ldm_lite.train: data order, exact resume, atomic checkpoints, NaN guard, interrupts,
EMA, clipping, AMP, warm-up, progress bar, errors, and DDP on the CPU (2 processes, gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import ldm_lite.train as train_mod
import ldm_lite.train.loop as loop_mod
from ldm_lite.train import NonFiniteLossError, TrainConfig, Trainer, _StepBatchSampler


# --------------------------------------------------------------------------------------------------
# A tiny GAN-shaped module: dropout + noise inside training_step (so the RNG matters), two
# optimisers of different kinds, the second skipped before `disc_start`, a buffer set in
# on_train_start (like scale_by_std).
# --------------------------------------------------------------------------------------------------
class ToyGAN(nn.Module):
    def __init__(self, noise=True, dropout=0.2, disc_start=3, nan_at=None, sigint_at=None):
        super().__init__()
        self.noise, self.disc_start = noise, disc_start
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(8, 3, 3, padding=1))
        self.disc = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(64, 1))
        self.register_buffer("scale", torch.ones(()))
        self.starts = 0
        self.nan_at = nan_at  # step index at which the loss becomes NaN
        self.sigint_at = sigint_at  # step index at which training_step sends itself SIGINT
        self.seen_dtype = None

    def configure_optimizers(self):
        return {
            "gen": torch.optim.Adam(self.net.parameters(), lr=1e-2),
            "disc": torch.optim.SGD(self.disc.parameters(), lr=1e-2, momentum=0.9),
        }

    def on_train_start(self, first_batch):
        self.starts += 1
        self.scale.fill_(1.0 / first_batch[0].std())

    def training_step(self, batch, step, optimizer_name):
        x = batch[0] * self.scale
        if self.noise:
            x = x + 0.1 * torch.randn_like(x)
        if optimizer_name == "gen":
            if self.sigint_at == step:
                os.kill(os.getpid(), signal.SIGINT)
            rec = self.net(x)
            self.seen_dtype = rec.dtype
            loss = F.mse_loss(rec.float(), x)
            logs = {"mse": loss.detach()}
            if step >= self.disc_start:
                g = -self.disc(rec).float().mean()
                loss = loss + 0.1 * g
                logs["g"] = g.detach()
            if self.nan_at == step:
                loss = loss * float("nan")
            return loss, logs
        if step < self.disc_start:
            return None, {}
        with torch.no_grad():
            rec = self.net(x)
        d = F.softplus(-self.disc(x)).mean() + F.softplus(self.disc(rec)).mean()
        return d.float(), {"d": d.item()}


class AugDataset(torch.utils.data.Dataset):
    """Fixed images plus a random brightness shift drawn from the global torch RNG (augmentation)."""

    def __init__(self, n=40, seed=7):
        self.x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i] + 0.05 * torch.rand(()),)


def make_dataset(n=40):
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(7)))


def make_module(init_seed=123, **kw) -> ToyGAN:
    torch.manual_seed(init_seed)
    return ToyGAN(**kw)


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=10, batch_size=6, progress=False, device="cpu", ema_decay=0.9, lr_warmup_steps=3, drop_last=False)
    base.update(kw)
    return TrainConfig(**base)


def run(out_dir=None, resume=False, init_seed=123, dataset=None, callbacks=(), module_kw=None, **kw):
    m = make_module(init_seed, **(module_kw or {}))
    t = Trainer(m, dataset if dataset is not None else make_dataset(), cfg(out_dir=out_dir, **kw), callbacks=callbacks)
    hist = t.fit(resume=resume)
    return t, hist


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def losses(hist, first=1, last=10):
    keys = ("loss/gen", "loss/disc", "mse", "grad_norm/gen", "grad_norm/disc")
    return [(h["step"], tuple(h.get(k) for k in keys)) for h in hist if first <= h["step"] <= last]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 10-step run with a checkpoint at step 5 (and the end)."""
    out = tmp_path_factory.mktemp("ref")
    t, hist = run(out_dir=str(out), ckpt_every=5)
    return {"out": out, "trainer": t, "hist": hist, "weights": weights(t.module), "ema": {k: v.clone() for k, v in t.ema_state.items()}}


# --------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------
def test_data_order_is_a_function_of_seed_and_step():
    full = _StepBatchSampler(n=23, batch_size=4, seed=3, start=0, stop=20, drop_last=True)
    steps = [b for b in full]
    assert full.steps_per_epoch == 5 and len(steps) == 20
    assert all(k[0] == s for s, b in enumerate(steps) for k in b)  # keys carry their step
    idx = [[i for _, i in b] for b in steps]
    epoch0 = sum(idx[:5], [])
    assert len(set(epoch0)) == 20 and set(epoch0) <= set(range(23))  # no repeats inside an epoch
    assert idx[:5] != idx[5:10]  # a new permutation each epoch
    # starting at step 7 gives exactly the same batches as steps 7.. of the full run
    late = [[i for _, i in b] for b in _StepBatchSampler(23, 4, 3, start=7, stop=20)]
    assert late == idx[7:]
    # another seed, another order
    assert [[i for _, i in b] for b in _StepBatchSampler(23, 4, 4, 0, 5)] != idx[:5]
    # two ranks with batch 2 split exactly the global batch of 4
    r0 = [[i for _, i in b] for b in _StepBatchSampler(23, 2, 3, 0, 20, rank=0, world=2)]
    r1 = [[i for _, i in b] for b in _StepBatchSampler(23, 2, 3, 0, 20, rank=1, world=2)]
    assert [a + b for a, b in zip(r0, r1)] == idx
    # without drop_last the last batch of an epoch is smaller and every sample is seen
    nd = [[i for _, i in b] for b in _StepBatchSampler(10, 4, 0, 0, 3, drop_last=False)]
    assert [len(b) for b in nd] == [4, 4, 2] and sorted(sum(nd, [])) == list(range(10))


# --------------------------------------------------------------------------------------------------
# Resume, checkpoints
# --------------------------------------------------------------------------------------------------
def test_resume_is_bit_identical(reference, tmp_path):
    ref_hist = reference["hist"]
    assert [h["step"] for h in ref_hist] == list(range(1, 11))
    assert "loss/disc" not in ref_hist[2] and "loss/disc" in ref_hist[3]  # disc skipped before disc_start
    assert reference["trainer"].module.starts == 1

    ckpt = reference["out"] / "checkpoints" / "step_00000005"
    t, hist = run(out_dir=str(tmp_path / "resumed"), resume=str(ckpt), init_seed=999, ckpt_every=5)
    assert t.module.starts == 0  # on_train_start is not re-run on resume
    assert torch.equal(t.module.scale, reference["trainer"].module.scale)  # buffer came from the checkpoint
    assert losses(hist, 6, 10) == losses(ref_hist, 6, 10)
    assert losses(hist, 1, 5) == losses(ref_hist, 1, 5)  # history tail restored
    assert_same_weights(weights(t.module), reference["weights"])
    assert_same_weights(t.ema_state, reference["ema"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_random_augmentation(tmp_path, num_workers):
    ds = AugDataset()
    _, full = run(out_dir=str(tmp_path / "a"), ckpt_every=4, max_steps=8, dataset=ds, num_workers=num_workers)
    t, part = run(out_dir=str(tmp_path / "b"), resume=str(tmp_path / "a" / "checkpoints" / "step_00000004"),
                  init_seed=5, max_steps=8, dataset=ds, num_workers=num_workers)
    assert losses(part, 5, 8) == losses(full, 5, 8)


def test_checkpoint_layout_keep_last_and_safe_loading(reference):
    out = reference["out"]
    latest = json.loads((out / "latest.json").read_text())
    assert latest == {"step": 10, "checkpoint": "checkpoints/step_00000010"}
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000005", "step_00000010"]  # keep_last=2, no temp leftovers
    folder = out / "checkpoints" / "step_00000010"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optim.pt", "rng.json", "trainer.json"]
    optim = torch.load(folder / "optim.pt", weights_only=True)
    assert set(optim["optimizers"]) == {"gen", "disc"}
    state = json.loads((folder / "trainer.json").read_text())
    assert state["step"] == 10 and state["config"]["batch_size"] == 6 and len(state["history"]) == 10
    model = safetensors.torch.load_file(folder / "model.safetensors")
    assert "scale" in model  # buffers travel with the weights

    # load_weights: plain and EMA weights, from the out_dir (latest) or a folder
    m = Trainer.load_weights(out, make_module(1))
    assert_same_weights(weights(m), reference["weights"])
    m = Trainer.load_weights(folder, make_module(1), ema=True)
    for k, v in reference["ema"].items():
        assert torch.equal(m.state_dict()[k], v)
    assert torch.equal(m.scale, reference["weights"]["scale"])
    m = Trainer.load_weights(folder / "ema.safetensors", make_module(1), ema=True)  # one file
    assert torch.equal(m.state_dict()["net.0.weight"], reference["ema"]["net.0.weight"])
    assert Trainer.latest_checkpoint(out) == str(folder)
    assert Trainer.latest_checkpoint(out / "nothing") is None

    # keep_last=1 leaves one
    out2 = out.parent / (out.name + "_k1")
    run(out_dir=str(out2), ckpt_every=2, max_steps=6, keep_last=1)
    assert [p.name for p in (out2 / "checkpoints").iterdir()] == ["step_00000006"]


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if "step_00000010" in str(filename) and filename.endswith("ema.safetensors"):
            with open(filename, "wb") as f:  # half a file, then the "crash"
                f.write(b"\x00" * 10)
            raise OSError("disk full (simulated)")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky_save)
    with pytest.raises(OSError, match="simulated"):
        run(out_dir=str(tmp_path), ckpt_every=5)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)

    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 5
    assert not (tmp_path / "checkpoints" / "step_00000010").exists()
    Trainer.load_weights(tmp_path, make_module(1), ema=True)  # previous checkpoint intact
    t, hist = run(out_dir=str(tmp_path), resume=True, ckpt_every=5, init_seed=3)
    assert hist[-1]["step"] == 10
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005", "step_00000010"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        run(out_dir=str(tmp_path), ckpt_every=5, module_kw={"nan_at": 6})
    err = info.value
    msg = str(err)
    good = str(tmp_path / "checkpoints" / "step_00000005")
    assert isinstance(err, FloatingPointError)
    assert "step 7" in msg and "'gen'" in msg and "mse" in msg and good in msg
    assert err.step == 7 and err.optimizer_name == "gen" and err.checkpoint == good
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 5
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000005"]
    Trainer.load_weights(tmp_path, make_module(1))


def test_keyboard_interrupt_saves_and_resume_matches(reference, tmp_path):
    def stop_at_4(trainer, logs):
        torch.randn(100)  # callbacks may draw random numbers without changing training
        trainer.module.eval()  # ... or switch to eval mode to sample: the trainer switches back
        if logs["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(out_dir=str(tmp_path), callbacks=[stop_at_4])
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 4
    t, hist = run(out_dir=str(tmp_path), resume=True, init_seed=42)
    assert losses(hist, 1, 10) == losses(reference["hist"], 1, 10)
    assert_same_weights(weights(t.module), reference["weights"])


def test_sigint_is_deferred_to_the_end_of_the_step(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(out_dir=str(tmp_path), module_kw={"sigint_at": 5})  # sent mid-way through step 6
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 6
    t, hist = run(out_dir=str(tmp_path), resume=True, init_seed=42)
    assert_same_weights(weights(t.module), reference["weights"])


# --------------------------------------------------------------------------------------------------
# EMA, clipping, precision, warm-up, progress
# --------------------------------------------------------------------------------------------------
def test_ema_update_rule_and_swap():
    d = 0.9
    m = make_module(noise=False, dropout=0.0)
    t = Trainer(m, make_dataset(), cfg(max_steps=1, ema_decay=d, ema_warmup=False, lr_warmup_steps=0))
    old = {n: p.detach().clone() for n, p in m.named_parameters()}
    t.fit()
    new = {n: p.detach().clone() for n, p in m.named_parameters()}
    for n in old:
        torch.testing.assert_close(t.ema_state[n], d * old[n] + (1 - d) * new[n])
    assert not torch.equal(old["net.0.weight"], new["net.0.weight"])
    with t.swap_ema() as swapped:
        assert swapped is m
        for n, p in m.named_parameters():
            assert torch.equal(p, t.ema_state[n])
    for n, p in m.named_parameters():
        assert torch.equal(p, new[n])

    # ema_module(): only the tracked sub-module's parameters, and ema_start copies the weights first
    class OnlyNet(ToyGAN):
        def ema_module(self):
            return self.net

    m2 = OnlyNet(noise=False, dropout=0.0)
    t2 = Trainer(m2, make_dataset(), cfg(max_steps=2, ema_decay=0.5, ema_start=2))
    t2.fit()
    assert set(t2.ema_state) == {n for n, _ in m2.net.named_parameters()}
    for n, p in m2.net.named_parameters():
        assert torch.equal(t2.ema_state[n], p)


def test_ema_warmup_follows_litema():
    """With ema_warmup the n-th update uses min(decay, (1 + n) / (10 + n)) (CompVis LitEma)."""
    d = 0.9
    m = make_module(noise=False, dropout=0.0)
    t = Trainer(m, make_dataset(), cfg(max_steps=2, ema_decay=d, lr_warmup_steps=0))
    assert t.config.ema_warmup  # the default
    snaps = [{n: p.detach().clone() for n, p in m.named_parameters()}]

    t.callbacks.append(lambda trainer, logs: snaps.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    t.fit()
    expected = dict(snaps[0])
    for k, w in enumerate(snaps[1:], start=1):
        dk = min(d, (1 + k) / (10 + k))  # 2/11, then 3/12: both below 0.9
        expected = {n: dk * expected[n] + (1 - dk) * w[n] for n in w}
    for n in expected:
        torch.testing.assert_close(t.ema_state[n], expected[n])


def test_gradient_clipping_uses_global_norm_and_logs_it():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(5))

        def configure_optimizers(self):
            return {"sgd": torch.optim.SGD(self.parameters(), lr=1.0)}

        def training_step(self, batch, step, name):
            return (self.w * batch[0]).sum() * 10, {}

    m = Lin()
    ds = torch.utils.data.TensorDataset(torch.ones(4, 5))
    t = Trainer(m, ds, TrainConfig(max_steps=1, batch_size=1, grad_clip=0.5, progress=False, device="cpu"))
    hist = t.fit()
    grad = torch.full((5,), 10.0)
    assert hist[0]["grad_norm/sgd"] == pytest.approx(float(grad.norm()))  # norm before clipping
    torch.testing.assert_close((torch.ones(5) - m.w.detach()).norm(), torch.tensor(0.5))  # clipped to 0.5


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocast_works():
    m = make_module()
    t = Trainer(m, make_dataset(), cfg(max_steps=1))
    assert t.precision == "fp32"
    t.fit()
    assert m.seen_dtype == torch.float32
    m = make_module()
    t = Trainer(m, make_dataset(), cfg(max_steps=2, precision="bf16"))
    hist = t.fit()
    assert m.seen_dtype == torch.bfloat16 and all(map(torch.isfinite, map(torch.tensor, [h["loss/gen"] for h in hist])))
    assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay fp32


def test_fp16_grad_scaler_state_is_checkpointed(tmp_path):
    t, _ = run(out_dir=str(tmp_path), max_steps=2, precision="fp16")
    assert t.scaler.is_enabled()
    optim = torch.load(tmp_path / "checkpoints" / "step_00000002" / "optim.pt", weights_only=True)
    assert optim["scaler"]["scale"] == t.scaler.get_scale()


def test_lr_warmup_is_linear():
    _, hist = run(max_steps=5, lr_warmup_steps=4)
    assert [h["lr/gen"] for h in hist] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])


def test_cosine_lr_schedule_closed_form(tmp_path):
    import math

    _, hist = run(max_steps=6, lr_warmup_steps=0, lr_schedule="cosine", lr_min_ratio=0.2)
    expected = [1e-2 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * s / 6))) for s in range(6)]
    assert [h["lr/gen"] for h in hist] == pytest.approx(expected)
    # a pure function of the step: switching it on when resuming continues the same curve
    run(out_dir=str(tmp_path), max_steps=3, lr_warmup_steps=0)
    _, resumed = run(out_dir=str(tmp_path), max_steps=6, lr_warmup_steps=0, lr_schedule="cosine", lr_min_ratio=0.2,
                     resume=True)
    assert [h["lr/gen"] for h in resumed][-3:] == pytest.approx(expected[3:])
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(max_steps=1, batch_size=1, lr_schedule="linear")


def test_progress_bar_shows_loss_and_can_be_disabled(monkeypatch):
    bars = []

    class FakeBar:
        def __init__(self, **kw):
            self.kw, self.postfix, self.n = kw, [], kw.get("initial", 0)
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix(self, d, refresh=True):
            self.postfix.append(dict(d))

        def close(self):
            pass

    monkeypatch.setattr(loop_mod, "tqdm", FakeBar)
    run(max_steps=4, progress=True, log_every=2)
    run(max_steps=1, progress=False)
    assert bars[0].kw["disable"] is False and bars[0].n == 4 and bars[0].kw["total"] == 4
    assert len(bars[0].postfix) == 2 and "loss/gen" in bars[0].postfix[-1]
    assert bars[1].kw["disable"] is True


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(make_module(), make_dataset(4), cfg(batch_size=6, drop_last=True))

    class NoStep(nn.Module):
        def configure_optimizers(self):
            return {}

    with pytest.raises(TypeError, match=r"NoStep has no training_step\(\)"):
        Trainer(NoStep(), make_dataset(), cfg())

    class NoOpt(nn.Module):
        def training_step(self, batch, step, name):
            return None, {}

    with pytest.raises(TypeError, match=r"configure_optimizers\(\)"):
        Trainer(NoOpt(), make_dataset(), cfg())

    empty = tmp_path / "empty_run"
    with pytest.raises(FileNotFoundError, match="empty_run"):
        run(out_dir=str(empty), resume=True)

    with pytest.raises(ValueError, match="out_dir"):
        cfg(ckpt_every=5)

    run(out_dir=str(tmp_path / "r"), max_steps=1)
    with pytest.raises(FileExistsError, match="resume=True"):
        run(out_dir=str(tmp_path / "r"), max_steps=2)


# --------------------------------------------------------------------------------------------------
# DDP on the CPU: 2 processes, gloo
# --------------------------------------------------------------------------------------------------
DDP_STEPS, DDP_BATCH = 6, 4


def _ddp_cfg(out_dir):
    return cfg(max_steps=DDP_STEPS, batch_size=DDP_BATCH, drop_last=True, ddp=True, find_unused_parameters=True,
               out_dir=out_dir, ckpt_every=3)


def _ddp_worker(rank, store_path, root):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        assert train_mod.world_size() == 2 and train_mod.is_main_process() == (rank == 0)
        m = make_module(noise=False, dropout=0.0)
        t = Trainer(m, make_dataset(), _ddp_cfg(os.path.join(root, "run")))
        hist = t.fit()
        safetensors.torch.save_file(weights(m), os.path.join(root, f"rank{rank}.safetensors"))
        if rank == 0:
            with open(os.path.join(root, "hist.json"), "w") as f:
                json.dump(hist, f)
        # resume from the step-3 checkpoint under DDP, with other initial weights
        m2 = make_module(init_seed=77, noise=False, dropout=0.0)
        t2 = Trainer(m2, make_dataset(), _ddp_cfg(os.path.join(root, "resumed")))
        t2.fit(resume=os.path.join(root, "run", "checkpoints", "step_00000003"))
        safetensors.torch.save_file(weights(m2), os.path.join(root, f"resumed{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    store = tempfile.mktemp(prefix="ldm_lite_ddp_store_")
    # fork skips re-importing torch in each child (seconds on 2 busy cores); it is safe here as in
    # DataLoader workers: the children run with one intra-op thread. Elsewhere, spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    mp.start_processes(_ddp_worker, args=(store, str(tmp_path)), nprocs=2, join=True, start_method=method)

    w0 = safetensors.torch.load_file(tmp_path / "rank0.safetensors")
    w1 = safetensors.torch.load_file(tmp_path / "rank1.safetensors")
    assert_same_weights(w0, w1)  # ranks stay in sync
    r0 = safetensors.torch.load_file(tmp_path / "resumed0.safetensors")
    assert_same_weights(r0, w0)  # resume under DDP is exact too
    rng = json.loads((tmp_path / "run" / "checkpoints" / "step_00000003" / "rng.json").read_text())
    assert rng["world_size"] == 2 and len(rng["ranks"]) == 2 and rng["ranks"][0] != rng["ranks"][1]

    # one process with the global batch (batch_size x world_size) computes the same run
    m = make_module(noise=False, dropout=0.0)
    single = dataclasses.replace(_ddp_cfg(str(tmp_path / "single")), ddp=False, batch_size=2 * DDP_BATCH)
    Trainer(m, make_dataset(), single).fit()
    for k, v in weights(m).items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6, msg=k)
    hist = json.loads((tmp_path / "hist.json").read_text())
    assert [h["step"] for h in hist] == list(range(1, DDP_STEPS + 1))
