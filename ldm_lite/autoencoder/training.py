"""The autoencoder and its loss as one module the course's ``Trainer`` can train.

Two optimisers, as in the paper's first-stage training (App. G): ``"ae"`` updates encoder, decoder
(and quantiser / learned log-variance), ``"disc"`` updates the PatchGAN discriminator once the GAN is
switched on at ``disc_start``. Before that the discriminator step is skipped (the Trainer's protocol:
``training_step`` returns ``None``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ldm_lite.autoencoder.model import AutoencoderKL, VQModel
from ldm_lite.metrics import psnr, ssim


class AutoencoderModule(nn.Module):
    """``AutoencoderKL`` or ``VQModel`` + ``LPIPSWithDiscriminator`` / ``VQLPIPSWithDiscriminator``.

    Args:
        autoencoder: the model to train.
        loss: its loss (holds the discriminator and, for KL, the learned log-variance).
        lr: Adam learning rate for the autoencoder (and log-variance); ``disc_lr`` for the
            discriminator (default: ``lr``). Adam betas (0.5, 0.9) as in the LDM / taming code.
    """

    def __init__(self, autoencoder: AutoencoderKL | VQModel, loss: nn.Module, lr: float = 2e-4,
                 disc_lr: float | None = None, betas=(0.5, 0.9)):
        super().__init__()
        if not isinstance(autoencoder, (AutoencoderKL, VQModel)):
            raise TypeError(f"expected an AutoencoderKL or VQModel, got {type(autoencoder).__name__}")
        self.autoencoder, self.loss = autoencoder, loss
        self.is_vq = isinstance(autoencoder, VQModel)
        self.lr, self.disc_lr, self.betas = lr, disc_lr or lr, tuple(betas)
        self._reconstructions: torch.Tensor | None = None

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        ae_params = [p for p in self.autoencoder.parameters() if p.requires_grad]
        if getattr(self.loss, "logvar", None) is not None:
            ae_params.append(self.loss.logvar)
        opts = {"ae": torch.optim.Adam(ae_params, lr=self.lr, betas=self.betas)}
        if self.loss.discriminator_weight > 0 and self.loss.disc_factor > 0:
            opts["disc"] = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.disc_lr, betas=self.betas)
        return opts

    def ema_module(self) -> nn.Module:
        return self.autoencoder

    def forward(self, batch, step: int, optimizer_name: str):
        return self.training_step(batch, step, optimizer_name)

    def training_step(self, batch, step: int, optimizer_name: str):
        x = batch["image"] if isinstance(batch, dict) else batch
        last_layer = self.autoencoder.get_last_layer()
        if optimizer_name == "ae":
            if self.is_vq:
                xrec, qloss, info = self.autoencoder(x)
                loss, log = self.loss(qloss, x, xrec, 0, step, last_layer=last_layer)
                log = dict(log, perplexity=info["perplexity"], usage=info["usage"])
            else:
                xrec, posterior = self.autoencoder(x)
                loss, log = self.loss(x, xrec, posterior, 0, step, last_layer=last_layer)
            self._reconstructions = xrec.detach()
            log = dict(log, psnr=psnr(xrec.detach(), x))
            return loss, {k: float(v) for k, v in log.items()}
        if optimizer_name == "disc":
            if not self.loss.gan_active(step) or self._reconstructions is None:
                return None, {}
            args = (x, self._reconstructions)
            if self.is_vq:
                loss, log = self.loss(torch.zeros(()), *args, 1, step)
            else:
                loss, log = self.loss(*args, None, 1, step)
            return loss, {k: float(v) for k, v in log.items()}
        raise ValueError(f"unknown optimizer {optimizer_name!r}; expected 'ae' or 'disc'")


@torch.no_grad()
def evaluate_reconstruction(autoencoder, images: torch.Tensor, batch_size: int = 64) -> dict:
    """Reconstruct ``images`` (N, 3, H, W) in [-1, 1] deterministically (posterior mean / nearest code)
    and return dict(psnr, ssim, reconstructions) -- PSNR/SSIM averaged per image."""
    autoencoder.eval()
    recs = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if isinstance(autoencoder, VQModel):
            recs.append(autoencoder(x)[0].clamp(-1, 1))
        else:
            recs.append(autoencoder(x, sample_posterior=False)[0].clamp(-1, 1))
    rec = torch.cat(recs)
    return dict(psnr=float(psnr(rec, images)), ssim=float(ssim(rec, images)), reconstructions=rec)
