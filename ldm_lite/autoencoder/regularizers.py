"""The two latent regularisers of the paper's first stage (Sec. 3.1).

* **KL-reg** -- the encoder predicts a diagonal Gaussian q(z|x) = N(mu, sigma^2) and a *slight* KL
  penalty towards N(0, I) keeps the latent variance bounded (weight ~1e-6, so this is far from a VAE).
* **VQ-reg** -- a vector-quantisation layer (van den Oord et al. 2017) snaps each latent vector to its
  nearest codebook entry; the decoder then acts like a VQGAN decoder (Esser et al. 2021).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DiagonalGaussianDistribution:
    """q(z|x) with mean and log-variance stacked on the channel axis.

    Args:
        parameters: (B, 2C, h, w) -- the first C channels are the mean, the last C the log-variance.
        deterministic: if True the variance is zero: ``sample()`` returns the mean and ``kl()`` is 0.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.dim() < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"expected parameters of shape (B, 2C, ...) with an even channel count, got {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        # clamp as in the LDM code: exp(-30)..exp(20) keeps std finite in fp32
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.logvar = torch.zeros_like(self.mean)
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps (the reparameterisation trick), (B, C, h, w)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean mu, (B, C, h, w): what the LDM encodes with when it wants a deterministic latent."""
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(q || p) summed over latent dimensions, one value per sample: (B,).

        Against N(0, I): 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
        """
        dims = list(range(1, self.mean.dim()))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` under q, summed per sample: (B,)."""
        dims = list(range(1, self.mean.dim()))
        log2pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=sample.dtype, device=sample.device))
        return 0.5 * torch.sum(log2pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation with a straight-through gradient.

    For each latent vector z_e (one per spatial position) pick the nearest codebook entry e_k and
    return z_q = e_k. The loss (van den Oord et al. 2017, Eq. 3) is

        ||sg[z_e] - e_k||^2  +  beta * ||z_e - sg[e_k]||^2
          (codebook term)       (commitment term)

    Note: taming-transformers' ``legacy=True`` puts beta on the codebook term instead; we use the
    paper's form. The straight-through estimator z_q = z_e + sg[e_k - z_e] copies the decoder's
    gradient onto the encoder output.

    Args:
        n_e: codebook size. e_dim: vector length (the latent channels). beta: commitment weight.
        dead_code_threshold: if > 0, codes whose running usage falls below this value (an EMA of how
            many vectors each code receives per batch) are re-initialised to random encoder outputs
            during training -- a simple fix for codebook collapse.
        usage_decay: decay of that running usage count.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, dead_code_threshold: float = 0.0, usage_decay: float = 0.99):
        super().__init__()
        if n_e < 1 or e_dim < 1:
            raise ValueError(f"codebook size and dimension must be positive, got n_e={n_e}, e_dim={e_dim}")
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.register_buffer("usage", torch.ones(n_e))

    def forward(self, z: torch.Tensor):
        """Quantise z of shape (B, e_dim, h, w).

        Returns ``(z_q, loss, info)`` with z_q (B, e_dim, h, w), the scalar VQ loss, and
        ``info = dict(indices (B, h, w), perplexity, usage)`` where usage is the fraction of the
        codebook used in this batch and perplexity = exp(entropy of code frequencies).
        """
        if z.dim() != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"expected z of shape (B, {self.e_dim}, h, w), got {tuple(z.shape)}")
        B, C, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)  # (B*h*w, C)
        codebook = self.embedding.weight
        # squared distances ||z||^2 - 2 z.e + ||e||^2 without forming (N, K, C)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
        indices = dist.argmin(dim=1)
        zq_flat = F.embedding(indices, codebook)
        z_q = zq_flat.view(B, h, w, C).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(z_q, z.detach())
        commitment_loss = F.mse_loss(z, z_q.detach())
        loss = codebook_loss + self.beta * commitment_loss
        z_q = z + (z_q - z).detach()  # straight-through estimator

        counts = torch.bincount(indices, minlength=self.n_e).to(z.dtype)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        if self.training:
            with torch.no_grad():
                self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
                if self.dead_code_threshold > 0 and self.embedding.weight.requires_grad:  # a frozen codebook stays
                    self._restart_dead_codes(flat.detach())
        info = dict(
            indices=indices.view(B, h, w),
            perplexity=perplexity.detach(),
            usage=(counts > 0).float().mean().detach(),
            codebook_loss=codebook_loss.detach(),
            commitment_loss=commitment_loss.detach(),
        )
        return z_q, loss, info

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> int:
        dead = torch.nonzero(self.usage < self.dead_code_threshold).flatten()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        self.embedding.weight.data[dead] = flat[pick]
        self.usage[dead] = 1.0
        return int(dead.numel())

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Look up codes: indices (B, h, w) -> z_q (B, e_dim, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()
