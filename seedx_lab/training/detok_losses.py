"""Training losses of the de-tokenizer: denoising (resampler + UNet) and the tiny VAE.

The de-tokenizer itself (:class:`seedx_lab.detokenizer.Detokenizer`) is the model and its sampling loop;
what it is trained with lives here. The forward diffusion and the regression target come from diffusers'
``DDPMScheduler`` (``add_noise``, ``get_velocity``) built from the de-tokenizer's own scheduler config, so
training and sampling read one noise schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

__all__ = ["noise_schedule", "add_noise", "training_target", "denoising_loss", "vae_loss", "foreground_mask",
           "pixel_weights", "posterior_noise", "calibrate_scaling_factor"]


def noise_schedule(detok) -> DDPMScheduler:
    """The ``DDPMScheduler`` of ``detok.scheduler``'s betas (same config), for ``add_noise`` / ``get_velocity``.

    It takes the sampler's ``alphas_cumprod`` ``[num_train_timesteps]``: with a zero terminal SNR the Euler
    sampler lifts the last value from 0 to 2**-24 so that its largest sigma is finite, and training at
    t = T-1 uses that same value, so the two schedules agree on every timestep."""
    ddpm = DDPMScheduler.from_config(detok.scheduler.config)
    ddpm.alphas_cumprod = detok.scheduler.alphas_cumprod.clone()
    return ddpm


def add_noise(detok, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (``DDPMScheduler.add_noise``);
    latents/noise ``[B, C, h, w]``, timesteps ``[B]`` integers in ``[0, num_train_timesteps)``."""
    return noise_schedule(detok).add_noise(latents, noise, timesteps.to(latents.device).long())


def training_target(detok, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, by the scheduler's ``prediction_type``: the noise ("epsilon", SDXL),
    the velocity sqrt(abar) noise - sqrt(1 - abar) x_0 (``DDPMScheduler.get_velocity``, "v_prediction") or
    x_0 ("sample"); latents/noise ``[B, C, h, w]``, timesteps ``[B]``."""
    kind = detok.scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if kind == "v_prediction":
        return noise_schedule(detok).get_velocity(latents, noise, timesteps.to(latents.device).long())
    raise ValueError(f"unknown prediction_type {kind!r}")


def denoising_loss(detok, features: torch.Tensor, images: torch.Tensor | None, generator: torch.Generator | None = None,
                   cond_drop_prob: float | None = None, latents: torch.Tensor | None = None,
                   timesteps: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
    """Denoising MSE (against :func:`training_target`) for features ``[B, N, embedding_dim]`` and their images
    ``[B, 3, H, W]`` in [-1, 1]; the VAE is frozen, the resampler and UNet get gradients.

    ``latents``: already-encoded, scaled latents ``[B, C, h, w]`` (then ``images`` may be None).
    ``timesteps``: the training timesteps ``[B]`` (default: uniform over the scheduler's).
    ``cond_drop_prob`` (default ``detok.config.cond_drop_prob``): chance to replace a sample's features by
    zeros, so the model learns the unconditional branch that guidance uses. Random draws, in order:
    VAE posterior sample (when encoding), noise, timesteps, condition dropout.
    ``rows``: train on these rows only, after every random draw was made for the whole batch (a data-parallel
    process's share of a global batch draws what one process would draw for those rows)."""
    from ..detokenizer import _randn

    d = detok
    d._check_features(features)
    if latents is None:
        d._check_images(images, batch=features.shape[0])
        B, H, W = images.shape[0], images.shape[2], images.shape[3]
    else:
        B, f = latents.shape[0], d.vae_scale_factor
        H, W = latents.shape[2] * f, latents.shape[3] * f
    p = d.config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
    gen_device = generator.device if generator is not None else d.device

    if latents is None:
        latents = d.encode_images(images, generator)
    latents = latents.to(d.dtype)                                                   # [B, C, h, w]
    noise = _randn(latents.shape, generator, d.device, d.dtype)                      # [B, C, h, w]
    T = d.scheduler.config.num_train_timesteps
    if timesteps is None:
        t = torch.randint(0, T, (B,), generator=generator, device=gen_device).to(d.device)   # [B]
    else:
        t = torch.as_tensor(timesteps, device=d.device).long().reshape(-1)
        if t.shape[0] != B or bool((t < 0).any() or (t >= T).any()):
            raise ValueError(f"timesteps must be {B} integers in [0, {T}), got {tuple(t.shape)} "
                             f"from {int(t.min())} to {int(t.max())}")
    noisy = add_noise(d, latents, noise, t)                                          # [B, C, h, w]

    if p > 0:  # condition dropout: learn the "zero features" branch used by guidance
        keep = torch.rand(B, generator=generator, device=gen_device).to(d.device) >= p   # [B]
        features = features * keep.view(B, 1, 1).to(features.dtype)
    if rows is not None:
        features, latents, noise, noisy, t = (x[rows] for x in (features, latents, noise, noisy, t))

    encoder_hidden_states, text_embeds, time_ids = d.encode_condition(features, H, W)
    pred = d.unet(noisy, t, encoder_hidden_states=encoder_hidden_states,
                  added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample   # [B, C, h, w]
    return F.mse_loss(pred.float(), training_target(d, latents, noise, t).float())


def foreground_mask(images: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """``[B, 1, H, W]`` float mask of pixels whose colour differs from the image's background by more
    than ``threshold`` (summed absolute difference over RGB, images ``[B, 3, H, W]`` in [-1, 1]). The
    background is the per-channel median of the border pixels, which holds for the plain backgrounds of
    the shape world and is a rough guess elsewhere."""
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=-1)  # [B, 3, 2H+2W]
    background = border.median(dim=-1).values[:, :, None, None]  # [B, 3, 1, 1]
    return ((images - background).abs().sum(1, keepdim=True) > threshold).to(images.dtype)


def reconstruction_error(recon: torch.Tensor, images: torch.Tensor, foreground_weight: float = 1.0,
                         l1_weight: float = 0.0) -> torch.Tensor:
    """Mean of ``(r - x)^2 + l1_weight * |r - x|`` over ``[B, 3, H, W]`` images in [-1, 1], each pixel
    weighted ``foreground_weight`` where :func:`foreground_mask` marks an object and 1 elsewhere (a
    weighted mean). With the defaults (1, 0) it is plain MSE. Used by the VAE and the Type-A VQ tokenizer."""
    diff = recon.float() - images.float()                                            # [B, 3, H, W]
    err = diff ** 2 + l1_weight * diff.abs() if l1_weight else diff ** 2
    if foreground_weight == 1.0:
        return err.mean()
    w = pixel_weights(images, foreground_weight)                                    # [B, 1, H, W]
    return (err * w).mean() / w.mean()


def pixel_weights(images: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """``[B, 1, H, W]``: ``foreground_weight`` on the object pixels of images ``[B, 3, H, W]`` in [-1, 1]
    (:func:`foreground_mask`), 1 elsewhere."""
    return 1.0 + (foreground_weight - 1.0) * foreground_mask(images.float())


def posterior_noise(detok, image_shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """The unit noise ``[B, C, h, w]`` that ``latent_dist.sample(generator)`` would draw for images of
    ``image_shape`` ``[B, 3, H, W]`` (diffusers' ``randn_tensor``, the VAE's device and dtype)."""
    from diffusers.utils.torch_utils import randn_tensor

    B, _, H, W = image_shape
    f = detok.vae_scale_factor
    shape = (B, detok.vae.config.latent_channels, H // f, W // f)
    return randn_tensor(shape, generator=generator, device=detok.vae.device, dtype=detok.vae.dtype)


def vae_loss(detok, images: torch.Tensor, kl_weight: float = 1e-3, generator: torch.Generator | None = None,
             foreground_weight: float = 1.0, l1_weight: float = 0.0, noise: torch.Tensor | None = None,
             share=None) -> torch.Tensor:
    """Reconstruction error + kl_weight * KL(q(z|x) || N(0, I)) per latent element, for training the tiny
    VAE; images ``[B, 3, H, W]`` in [-1, 1].

    The error per pixel is ``(r - x)^2 + l1_weight * |r - x|``, averaged with weight ``foreground_weight``
    on pixels far from the image's background (:func:`foreground_mask`) and 1 elsewhere. With the defaults
    (1, 0) it is plain MSE. Flat pictures are mostly background; without the weight the VAE learns the
    background first and shifts the hue of small objects (red drifting to purple). The L1 term keeps flat
    colours saturated.

    ``noise``: the posterior's unit noise ``[B, C, h, w]`` (:func:`posterior_noise`), instead of a draw from
    ``generator``. ``share(mean, count)``: what a data-parallel process makes of each mean over its rows
    (:meth:`seedx_lab.training.distributed.Shard.mean`); the reconstruction error is a weighted mean, so
    its count is the sum of the pixel weights."""
    d = detok
    d._check_images(images)
    if foreground_weight <= 0 or l1_weight < 0:
        raise ValueError(f"foreground_weight must be > 0 and l1_weight >= 0, got {foreground_weight}, {l1_weight}")
    images = images.to(d.device, d.vae.dtype)
    posterior = d.vae.encode(images).latent_dist
    if noise is None:
        z = posterior.sample(generator)                                              # [B, C, h, w]
    else:
        z = posterior.mean + posterior.std * noise.to(posterior.mean)                # what sample() computes
    rec = reconstruction_error(d.vae.decode(z).sample, images, foreground_weight, l1_weight)
    kl = posterior.kl().float().mean() / z[0].numel()
    if share is not None:
        weight = images[:, :1].numel() if foreground_weight == 1.0 else pixel_weights(images, foreground_weight).sum()
        rec, kl = share(rec, weight), share(kl, images.shape[0])
    return rec + kl_weight * kl


@torch.no_grad()
def calibrate_scaling_factor(detok, images: torch.Tensor) -> float:
    """Set ``detok.vae.config.scaling_factor`` = 1 / std of the latents of ``images`` ``[B, 3, H, W]`` in
    [-1, 1] (how SD chose 0.18215 / SDXL 0.13025) and return it."""
    detok._check_images(images)
    z = detok.vae.encode(images.to(detok.device, detok.vae.dtype)).latent_dist.mean
    factor = float(1.0 / z.float().std())
    detok.vae.register_to_config(scaling_factor=factor)
    return factor
