"""Solutions to the exercises of notebook 04 (latent diffusion)."""

import torch


def scale_factor_of(latents):
    """One factor for all channels: 1 / the standard deviation of every latent value pooled."""
    values = latents.detach().double().flatten()
    centred = values - values.mean()
    return float(1.0 / torch.sqrt((centred**2).sum() / (values.numel() - 1)))


def my_encode(model, images):
    """Images in [-1, 1] -> scale_factor * (posterior mean of q(z|x))."""
    with torch.no_grad():
        mean = model.first_stage.encode(images).mean
    return mean * model.scale_factor


def my_decode(model, z):
    """Scaled latents -> images: undo the scale, then decode."""
    with torch.no_grad():
        return model.first_stage.decode(z / model.scale_factor)


def my_ldm_loss(model, images, t, noise):
    """Eq. 2: mean of (eps - eps_theta(z_t, t))^2 with z_t = sqrt(a) z + sqrt(1 - a) eps, z = my_encode(images)."""
    z = my_encode(model, images)
    a = model.schedule.alphas_cumprod[t].to(z.dtype).view(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    return (noise - model.apply_model(z_t, t)).pow(2).mean()
