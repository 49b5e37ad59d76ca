"""Tests for seedx_lab.detokenizer (SDXL-architecture de-tokenizer)."""

import pytest
import torch
import torch.nn.functional as F

from seedx_lab.detokenizer import (
    SDXL_SCHEDULER_CONFIG,
    AttentionPool,
    Detokenizer,
    DetokenizerConfig,
    PerceiverAttention,
    ResamplerXLV2,
)
from seedx_lab.training import detok_losses as DL
from seedx_lab.training.detok_losses import foreground_mask

# diffusers' Euler scheduler trips a numpy-2 deprecation inside set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Detokenizer(DetokenizerConfig.tiny()).eval()


@pytest.fixture(scope="module")
def feats():
    return torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- published widths


def expected_resampler_keys(depth):
    """The ResamplerXLV2 state_dict layout of AILab-CVC/SEED-X, written out by hand."""
    keys = {"latents", "proj_in.weight", "proj_in.bias", "norm_out.weight", "norm_out.bias",
            "unet_proj_1.weight", "unet_proj_1.bias", "unet_proj_2.weight", "unet_proj_2.bias",
            "unet_attnpool.positional_embedding"}
    for p in ("q_proj", "k_proj", "v_proj", "c_proj"):
        keys |= {f"unet_attnpool.{p}.weight", f"unet_attnpool.{p}.bias"}
    for l in range(depth):
        keys |= {f"layers.{l}.0.norm1.weight", f"layers.{l}.0.norm1.bias",
                 f"layers.{l}.0.norm2.weight", f"layers.{l}.0.norm2.bias",
                 f"layers.{l}.0.to_q.weight", f"layers.{l}.0.to_kv.weight", f"layers.{l}.0.to_out.weight",
                 f"layers.{l}.1.0.weight", f"layers.{l}.1.0.bias",
                 f"layers.{l}.1.1.weight", f"layers.{l}.1.3.weight"}
    return keys


def test_published_resampler_keys_and_shapes():
    r = ResamplerXLV2(DetokenizerConfig.published(), device="meta")
    sd = r.state_dict()
    assert set(sd) == expected_resampler_keys(4)
    shapes = {
        "latents": (1, 64, 1024),
        "proj_in.weight": (1024, 4096),
        "layers.3.0.to_q.weight": (1024, 1024),  # 16 heads x 64
        "layers.3.0.to_kv.weight": (2048, 1024),
        "layers.3.0.to_out.weight": (1024, 1024),
        "layers.3.1.1.weight": (4096, 1024),
        "layers.3.1.3.weight": (1024, 4096),
        "unet_proj_1.weight": (768, 1024),
        "unet_proj_2.weight": (1280, 1024),
        "unet_attnpool.positional_embedding": (65, 1024),
        "unet_attnpool.c_proj.weight": (1280, 1024),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k


def test_published_parameter_counts_on_meta():
    cfg = DetokenizerConfig.published()
    d = Detokenizer(cfg, device="meta", dtype=torch.bfloat16)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in d.parameters())

    # resampler count from the layout, computed independently of the module
    D, E, Q, L, ff = 1024, 4096, 64, 4, 4
    per_layer = 4 * D + D * D + 2 * D * D + D * D + 2 * D + 2 * ff * D * D
    pool = (Q + 1) * D + 3 * (D * D + D) + (D * 1280 + 1280)
    expected = Q * D + (E * D + D) + L * per_layer + 2 * D + (D * 768 + 768) + (D * 1280 + 1280) + pool
    assert expected == 61_245_696
    assert n_params(d.resampler) == expected
    assert n_params(d.unet) == 2_567_463_684  # SDXL base UNet
    assert n_params(d.vae) == 83_653_863  # SDXL VAE

    sd = d.adapter_state_dict()
    assert all(k.startswith(("resampler.", "unet.")) for k in sd)
    assert {k[len("resampler."):] for k in sd if k.startswith("resampler.")} == expected_resampler_keys(4)
    assert "unet.add_embedding.linear_1.weight" in sd
    assert tuple(sd["unet.add_embedding.linear_1.weight"].shape) == (1280, 2816)
    assert not any(k.startswith("vae.") for k in sd)


def test_published_conditioning_and_schedule():
    cfg = DetokenizerConfig.published()
    assert cfg.cross_attention_dim == 768 + 1280 == cfg.unet["cross_attention_dim"]
    assert cfg.unet["projection_class_embeddings_input_dim"] == 1280 + 6 * 256
    assert cfg.latent_size == 128 == cfg.unet["sample_size"]
    d = Detokenizer(cfg, device="meta")
    assert d.time_ids(1).shape == (1, 6)
    # "leading" spacing with steps_offset 1: 1000 // 50 = 20 apart, +1
    d.scheduler.set_timesteps(50)
    want = torch.arange(49, -1, -1) * 20 + 1
    assert torch.equal(d.scheduler.timesteps.long(), want)


def test_time_ids_values(tiny):
    assert tiny.time_ids(3).tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 3
    assert tiny.time_ids(1, 48, 32).tolist() == [[48.0, 32.0, 0.0, 0.0, 48.0, 32.0]]


@pytest.mark.parametrize(
    "change, word",
    [
        (dict(output1_dim=16), "cross_attention_dim"),
        (dict(output2_dim=16, output1_dim=48), "projection_class_embeddings_input_dim"),
        (dict(heads=5), "divisible by heads"),
        (dict(image_size=62), "VAE factor"),
        (dict(depth=0), "depth"),
    ],
)
def test_config_validation(change, word):
    base = DetokenizerConfig.tiny().to_dict()
    base.update(change)
    with pytest.raises(ValueError, match=word):
        DetokenizerConfig.from_dict(base)


# ----------------------------------------------------------------------------- the resampler pieces


def test_perceiver_attention_matches_reference():
    torch.manual_seed(0)
    B, N, Q, D, H, Dh = 2, 5, 3, 16, 2, 8
    m = PerceiverAttention(D, Dh, H)
    x, lat = torch.randn(B, N, D), torch.randn(B, Q, D)
    seen = {}
    h = m.hook_attn.register_forward_hook(lambda mod, i, o: seen.setdefault("attn", o.detach()))
    out = m(x, lat)
    h.remove()

    # reference: layer norms, keys/values over [inputs; latents], torch's SDPA
    xn = F.layer_norm(x, (D,), m.norm1.weight, m.norm1.bias)
    ln = F.layer_norm(lat, (D,), m.norm2.weight, m.norm2.bias)
    kv = torch.cat([xn, ln], 1) @ m.to_kv.weight.T
    k, v = kv[..., : H * Dh], kv[..., H * Dh:]
    q = ln @ m.to_q.weight.T
    split = lambda t: t.view(B, -1, H, Dh).permute(0, 2, 1, 3)
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v))
    ref = ref.permute(0, 2, 1, 3).reshape(B, Q, H * Dh) @ m.to_out.weight.T
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    attn = seen["attn"]
    assert attn.shape == (B, H, Q, N + Q)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, H, Q))


def test_attention_pool_matches_torch_multihead_attention():
    torch.manual_seed(0)
    B, Q, D, H, O = 2, 6, 16, 4, 10
    m = AttentionPool(Q, D, H, O)
    h = torch.randn(B, Q, D)
    out = m(h)
    assert out.shape == (B, O)
    # full self-attention over [mean; tokens] in torch's (L, B, D) layout, keep token 0
    x = torch.cat([h.mean(1, keepdim=True), h], 1) + m.positional_embedding
    x = x.transpose(0, 1)
    ref, _ = F.multi_head_attention_forward(
        x, x, x, D, H, in_proj_weight=None,
        in_proj_bias=torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=m.c_proj.weight, out_proj_bias=m.c_proj.bias, training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=m.q_proj.weight, k_proj_weight=m.k_proj.weight,
        v_proj_weight=m.v_proj.weight,
    )
    torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-5)


def test_condition_shapes_and_hooks(tiny, feats):
    seen = {}
    hooks = [
        tiny.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
        for name in ("resampler.layers.1.0.hook_attn", "resampler.unet_attnpool.hook_attn", "resampler.hook_latents")
    ]
    try:
        with torch.no_grad():
            ehs, pooled, time_ids = tiny.encode_condition(feats)
    finally:
        for h in hooks:
            h.remove()
    assert ehs.shape == (2, 64, 64)  # [B, queries, 32 + 32]
    assert pooled.shape == (2, 32)
    assert time_ids.shape == (2, 6)
    assert seen["resampler.layers.1.0.hook_attn"] == (2, 4, 64, 64 + 64)  # keys = 64 inputs + 64 latents
    assert seen["resampler.unet_attnpool.hook_attn"] == (2, 4, 1, 65)
    assert seen["resampler.hook_latents"] == (2, 64, 64)
    # the number of input tokens is free (only the width is fixed)
    with torch.no_grad():
        ehs16, pooled16, _ = tiny.encode_condition(feats[:, :16])
    assert ehs16.shape == (2, 64, 64) and pooled16.shape == (2, 32)
    # samples are independent of each other in the batch
    with torch.no_grad():
        ehs1, pooled1, _ = tiny.encode_condition(feats[1:])
    torch.testing.assert_close(ehs1[0], ehs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled1[0], pooled[1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sampling


def test_sample_shapes_and_callback(tiny, feats):
    calls = []
    imgs = tiny.sample(feats, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                       callback=lambda i, t, lat, eps: calls.append((i, float(t), tuple(lat.shape), tuple(eps.shape))),
                       output_type="pt")
    assert imgs.shape == (2, 3, 64, 64)
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
    assert [c[0] for c in calls] == [0, 1, 2]
    assert [c[1] for c in calls] == tiny.scheduler.timesteps.tolist()
    assert all(c[2] == (2, 4, 16, 16) and c[3] == (2, 4, 16, 16) for c in calls)

    pils = tiny.sample(feats, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert len(pils) == 2 and pils[0].size == (64, 64) and pils[0].mode == "RGB"
    lat = tiny.sample(feats[:1], num_inference_steps=2, output_type="latent", height=32, width=48)
    assert lat.shape == (1, 4, 8, 12)


def test_step_end_callbacks_see_the_scheduler_and_can_steer(tiny, feats):
    """callback_on_step_end gets the tensors it names (x0 = the Euler step's own pred_original_sample),
    its returned latents are the ones the loop continues from, and watching_steps sees every step."""
    from diffusers import EulerDiscreteScheduler

    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    seen, watched = [], []

    def keep(detok, i, t, kw):
        seen.append((i, float(t), {k: v.clone() for k, v in kw.items()}))

    with tiny.watching_steps(lambda detok, i, t, kw: watched.append(sorted(kw))):
        out = tiny.sample(feats, num_inference_steps=3, latents=z, output_type="latent", guidance_scale=2.0,
                          callback_on_step_end=keep,
                          callback_on_step_end_tensor_inputs=("latents", "noise_pred", "pred_original_sample"))
    assert tiny.step_callbacks == [] and watched == [["latents", "noise_pred", "pred_original_sample"]] * 3
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == tiny.scheduler.timesteps.tolist()
    torch.testing.assert_close(seen[-1][2]["latents"], out, rtol=0, atol=0)
    # replay the steps on a fresh scheduler from the captured (latents, noise_pred): same x0 and latents
    sched = EulerDiscreteScheduler.from_config(tiny.scheduler.config)
    sched.set_timesteps(3)
    lat = z * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        step = sched.step(seen[i][2]["noise_pred"], t, lat)
        torch.testing.assert_close(step.pred_original_sample, seen[i][2]["pred_original_sample"], rtol=0, atol=0)
        lat = step.prev_sample
        torch.testing.assert_close(lat, seen[i][2]["latents"], rtol=0, atol=0)

    # a callback that returns latents steers the loop: zeroing them after the last step gives zero latents
    zeroed = tiny.sample(feats, num_inference_steps=2, latents=z, output_type="latent",
                         callback_on_step_end=lambda d, i, t, kw: {"latents": torch.zeros_like(kw["latents"])})
    assert torch.equal(zeroed, torch.zeros_like(zeroed))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs.*'sigmas'"):
        tiny.sample(feats, num_inference_steps=1, callback_on_step_end=keep,
                    callback_on_step_end_tensor_inputs=("latents", "sigmas"))


def test_sample_reproducible(tiny, feats):
    run = lambda seed: tiny.sample(feats, num_inference_steps=2, output_type="latent",
                                   generator=torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_matches_diffusers_sdxl_pipeline(tiny, feats):
    """Our explicit loop = diffusers' StableDiffusionXLPipeline fed the same conditions."""
    from diffusers import StableDiffusionXLPipeline

    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = tiny.sample(feats, num_inference_steps=3, guidance_scale=3.0, latents=z, output_type="pt")
    with torch.no_grad():
        ehs, pooled, _ = tiny.encode_condition(feats)
        ehs_u, pooled_u, _ = tiny.encode_condition(torch.zeros_like(feats))
        pipe = StableDiffusionXLPipeline(vae=tiny.vae, unet=tiny.unet, scheduler=tiny.scheduler, text_encoder=None,
                                         text_encoder_2=None, tokenizer=None, tokenizer_2=None)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=ehs, pooled_prompt_embeds=pooled, negative_prompt_embeds=ehs_u,
                   negative_pooled_prompt_embeds=pooled_u, guidance_scale=3.0, num_inference_steps=3,
                   latents=z, height=64, width=64, output_type="pt").images
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_guidance_runs_two_branches(tiny, feats):
    batches = []
    h = tiny.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(4))
        plain = tiny.sample(feats, num_inference_steps=2, guidance_scale=1.0, latents=z, output_type="latent")
        assert batches == [2, 2]
        batches.clear()
        # uncond branch == cond branch: uncond + g * (cond - uncond) == cond for any g
        same = tiny.sample(feats, num_inference_steps=2, guidance_scale=5.0, latents=z, output_type="latent",
                           negative_features=feats)
        assert batches == [4, 4]
        # equal up to rounding: a batch of 4 takes other (threaded) reduction orders than a batch of 2, and
        # guidance multiplies the rounding-level cond - uncond by 5 (seen up to 2.4e-4 with two threads)
        torch.testing.assert_close(same, plain, rtol=1e-3, atol=2e-3)
        guided = tiny.sample(feats, num_inference_steps=2, guidance_scale=5.0, latents=z, output_type="latent")
        assert not torch.allclose(guided, plain, atol=5e-2)             # a real guidance moves latents by ~0.1
    finally:
        h.remove()


def test_float64_end_to_end(feats):
    torch.manual_seed(0)
    d = Detokenizer(DetokenizerConfig.tiny(), dtype=torch.float64)
    ehs, pooled, time_ids = d.encode_condition(feats)
    assert ehs.dtype == pooled.dtype == time_ids.dtype == torch.float64
    lat = d.sample(feats, num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert lat.dtype == torch.float64 and torch.isfinite(lat).all()


# ----------------------------------------------------------------------------- training


def test_add_noise_matches_ddpm(tiny):
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 998])
    for zero_snr, d in ((False, Detokenizer(DetokenizerConfig(scheduler=dict(SDXL_SCHEDULER_CONFIG)), device="meta")),
                        (True, tiny)):               # SDXL's schedule; seedx-tiny's rescaled one
        assert d.scheduler.config.rescale_betas_zero_snr == zero_snr
        ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=SDXL_SCHEDULER_CONFIG["beta_start"],
                             beta_end=SDXL_SCHEDULER_CONFIG["beta_end"], beta_schedule="scaled_linear",
                             rescale_betas_zero_snr=zero_snr)
        torch.testing.assert_close(DL.add_noise(d, x, n, t), ddpm.add_noise(x, n, t), rtol=1e-5, atol=1e-5)
    # the last timestep trains on the sampler's abar_T (2**-24 with a zero terminal SNR, where DDPM has 0)
    assert torch.equal(DL.noise_schedule(tiny).alphas_cumprod, tiny.scheduler.alphas_cumprod)
    assert float(tiny.scheduler.alphas_cumprod[-1]) == 2.0 ** -24
    last = torch.tensor([999, 999, 999])
    torch.testing.assert_close(DL.add_noise(tiny, x, n, last), 2.0 ** -12 * x + (1 - 2.0 ** -24) ** 0.5 * n)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_matches_diffusers(kind):
    from diffusers import DDPMScheduler

    cfg = DetokenizerConfig.tiny()
    cfg.scheduler.update(prediction_type=kind, rescale_betas_zero_snr=True)
    d = Detokenizer(cfg)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=cfg.scheduler["beta_start"], beta_end=cfg.scheduler["beta_end"],
                         beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 998])
    want = {"epsilon": n, "sample": x, "v_prediction": ddpm.get_velocity(x, n, t)}[kind]
    torch.testing.assert_close(DL.training_target(d, x, n, t), want, rtol=1e-5, atol=1e-5)
    if kind == "v_prediction":       # with a zero terminal SNR, the last step's target is -x_0 (nearly)
        assert not torch.allclose(want, n, atol=0.1)


def test_training_loss_gradients(feats):
    torch.manual_seed(0)
    d = Detokenizer(DetokenizerConfig.tiny())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = DL.denoising_loss(d, feats, images, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("resampler.latents", "resampler.proj_in.weight", "resampler.layers.0.0.to_q.weight",
                 "resampler.unet_attnpool.c_proj.weight", "unet.conv_in.weight", "unet.add_embedding.linear_1.weight"):
        g = d.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert all(p.grad is None for p in d.vae.parameters())  # the VAE stays frozen
    again = DL.denoising_loss(d, feats, images, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.detach(), loss.detach())


def test_training_loss_at_given_timesteps_is_the_mse_against_the_target(feats):
    """Explicit timesteps, no condition dropout: recomputed from add_noise, the UNet and training_target."""
    torch.manual_seed(0)
    d = Detokenizer(DetokenizerConfig.tiny())
    lat = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([7, 900])
    loss = DL.denoising_loss(d, feats, None, generator=torch.Generator().manual_seed(0), latents=lat,
                           cond_drop_prob=0.0, timesteps=t)
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))   # the first draw
    ehs, pooled, time_ids = d.encode_condition(feats, 64, 64)
    pred = d.unet(DL.add_noise(d, lat, noise, t), t, encoder_hidden_states=ehs,
                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    torch.testing.assert_close(loss, F.mse_loss(pred, DL.training_target(d, lat, noise, t)))
    other = DL.denoising_loss(d, feats, None, generator=torch.Generator().manual_seed(0), latents=lat,
                            cond_drop_prob=0.0, timesteps=torch.tensor([500, 500]))
    assert not torch.allclose(other, loss)
    with pytest.raises(ValueError, match=r"timesteps must be 2 integers in \[0, 1000\), got \(3,\)"):
        DL.denoising_loss(d, feats, None, latents=lat, timesteps=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="from 0 to 1000"):
        DL.denoising_loss(d, feats, None, latents=lat, timesteps=torch.tensor([0, 1000]))


def test_vae_loss_and_scaling_factor():
    torch.manual_seed(0)
    d = Detokenizer(DetokenizerConfig.tiny())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = DL.vae_loss(d, images, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert d.vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert d.vae.decoder.conv_out.weight.grad.abs().sum() > 0
    factor = DL.calibrate_scaling_factor(d, images)
    assert d.vae.config.scaling_factor == factor
    with torch.no_grad():
        z = d.vae.encode(images).latent_dist.mean * factor
    assert abs(float(z.std()) - 1.0) < 1e-4


def test_foreground_mask_marks_pixels_off_the_border_colour():
    # a plain background with one 6 x 5 patch of another colour, and one pixel barely off the background
    images = torch.full((2, 3, 16, 16), -0.2)
    images[0, :, 4:10, 3:8] = torch.tensor([0.9, -0.8, -0.8])[:, None, None]
    images[1, :, 7, 7] += 0.04                               # 3 * 0.04 = 0.12 < 0.15: still background
    images[1, 0, 0, 0] = 1.0                                 # one odd border pixel does not move the median
    mask = foreground_mask(images)
    assert mask.shape == (2, 1, 16, 16)
    want = torch.zeros(2, 1, 16, 16)
    want[0, 0, 4:10, 3:8] = 1
    want[1, 0, 0, 0] = 1
    assert torch.equal(mask, want)


def test_vae_loss_weights_foreground_error():
    torch.manual_seed(0)
    d = Detokenizer(DetokenizerConfig.tiny())
    images = torch.full((2, 3, 64, 64), 0.8)
    images[:, :, 20:36, 24:40] = -0.5                        # a 16 x 16 object on a light background
    g = lambda: torch.Generator().manual_seed(0)
    with torch.no_grad():
        post = d.vae.encode(images).latent_dist
        z = post.sample(g())
        recon = d.vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        err = (recon - images) ** 2 + 0.5 * (recon - images).abs()
        w = torch.ones(2, 1, 64, 64)
        w[:, :, 20:36, 24:40] = 5.0
        want_weighted = (err * w).sum() / (w.sum() * 3) + 1e-3 * kl
        want_plain = ((recon - images) ** 2).mean() + 1e-3 * kl
        got_weighted = DL.vae_loss(d, images, generator=g(), foreground_weight=5.0, l1_weight=0.5)
        got_plain = DL.vae_loss(d, images, generator=g())
    torch.testing.assert_close(got_weighted, want_weighted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_plain, want_plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="foreground_weight must be > 0"):
        DL.vae_loss(d, images, foreground_weight=0.0)
    with pytest.raises(ValueError, match="l1_weight >= 0"):
        DL.vae_loss(d, images, l1_weight=-1.0)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs(tiny, feats):
    with pytest.raises(ValueError, match=r"\[batch, tokens, 64\].*\(64, 64\)"):
        tiny.encode_condition(feats[0])  # rank 2
    with pytest.raises(ValueError, match=r"\(2, 64, 32\)"):
        tiny.sample(feats[..., :32])  # wrong width
    with pytest.raises(ValueError, match=r"\(2, 64, 32\)"):
        tiny.resampler(feats[..., :32])
    images = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\[batch, 3, H, W\].*\(2, 1, 64, 64\)"):
        DL.denoising_loss(tiny, feats, images[:, :1])
    with pytest.raises(ValueError, match="multiples of the VAE factor 4"):
        DL.denoising_loss(tiny, feats, images[..., :62, :62])
    with pytest.raises(ValueError, match=r"batch \(1\).*\(2\)"):
        DL.denoising_loss(tiny, feats, images[:1])
    with pytest.raises(ValueError, match="output_type"):
        tiny.sample(feats, num_inference_steps=1, output_type="np")
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny.sample(feats, num_inference_steps=0)
    with pytest.raises(ValueError, match="negative_features shape"):
        tiny.sample(feats, num_inference_steps=1, guidance_scale=2.0, negative_features=feats[:1])
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 16, 16\)"):
        tiny.sample(feats, num_inference_steps=1, latents=torch.zeros(2, 4, 8, 8))
