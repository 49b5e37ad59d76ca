"""A model loaded from the published layout draws as the published pipeline draws, by default.

The published de-tokenizer guides with the ViT features of an all-zero image, pooled 256 -> 64 like
the regression target. Here that negative and the SDXL-style Euler loop are rebuilt from diffusers'
own scheduler, UNet and VAE objects of the loaded model, and the image ``generate_image`` returns with
default arguments must equal it bit for bit. seedx-tiny keeps the negative it was trained with (its
stage b drops conditions to all-zero features).
"""
import copy
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

import seedx_lab
import seedx_lab.loading
from seedx_lab import tokens as T
from seedx_lab.cli import main as cli_main
from seedx_lab.model import SeedX, SeedXConfig
from seedx_lab.published import checkpoints as C

WORDS = "a red circle . here it is :".split()


@pytest.fixture(scope="module")
def model():
    tok = T.build_tokenizer(WORDS)
    torch.manual_seed(0)
    m = SeedX(SeedXConfig.tiny(len(tok)), tok).eval()
    m.config.num_inference_steps = 4       # the default the layout records (seedx_lab.json); keeps the test quick
    return m


@pytest.fixture(scope="module")
def root(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrained")
    C.write_published_layout(model, d)
    return d


@pytest.fixture(scope="module")
def loaded(root):
    return C.load_published(root)


def pooled_zero_image(m):
    """The published negative, rebuilt: ViT on zeros [1, 3, S, S] -> [1, 256, D], mean of every 4 in a row."""
    s = m.config.vit.image_size
    full = m.vit(torch.zeros(1, 3, s, s))
    return full.reshape(1, full.shape[1] // 4, 4, full.shape[2]).mean(2)      # [1, 64, D]


@torch.no_grad()
def published_pipeline(m, features, negative, steps, guidance, seed):
    """SDXL sampling as the published SDXLAdapter.generate runs it, on diffusers' objects of ``m``."""
    d = m.detok
    unet, vae = d.unet, d.vae
    assert isinstance(unet, UNet2DConditionModel) and isinstance(vae, AutoencoderKL)
    sched = EulerDiscreteScheduler.from_config(d.scheduler.config)
    size = d.config.image_size
    ehs_c, pooled_c = d.resampler(features)
    ehs_u, pooled_u = d.resampler(negative)
    ehs, pooled = torch.cat([ehs_u, ehs_c]), torch.cat([pooled_u, pooled_c])
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=ehs.dtype)
    g = torch.Generator().manual_seed(seed)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, unet.config.in_channels, size // f, size // f, generator=g)
    sched.set_timesteps(steps)
    latents = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        eps_u, eps_c = unet(x, t, encoder_hidden_states=ehs,
                            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample.chunk(2)
        latents = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents, generator=g).prev_sample
    img = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return (img[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def test_a_published_layout_model_draws_with_the_published_negative(loaded):
    c = loaded.config
    assert c.negative == "vit_zero_image" and c.guidance_scale > 1 and c.num_inference_steps == 4
    res = loaded.generate_image("a red circle")                               # default arguments
    want = published_pipeline(loaded, res.features[None], pooled_zero_image(loaded),
                              c.num_inference_steps, c.guidance_scale, seed=0)
    got = np.asarray(res.image)
    assert np.array_equal(got, want)
    # the counterfactual: guiding with all-zero features draws another picture
    zeros = published_pipeline(loaded, res.features[None], torch.zeros_like(res.features[None]),
                               c.num_inference_steps, c.guidance_scale, seed=0)
    assert not np.array_equal(got, zeros)


def test_every_public_path_uses_the_default_negative(loaded, monkeypatch, tmp_path):
    seen = []
    sample = loaded.detok.sample

    def spy(features, **kw):
        seen.append(kw.get("negative_features"))
        return sample(features, **kw)

    monkeypatch.setattr(loaded.detok, "sample", spy)
    want = pooled_zero_image(loaded)
    loaded.draw(torch.randn(64, loaded.config.vit.output_dim), num_inference_steps=1)
    loaded.generate_image("a red circle", num_inference_steps=1)
    loaded.generate("a red circle <img>", max_new_tokens=65, num_inference_steps=1)
    from seedx_lab import widgets
    widgets.diffusion_scrubber(loaded, "a red circle", num_inference_steps=1)
    monkeypatch.setattr(seedx_lab.loading, "load", lambda *a, **k: loaded)
    assert cli_main(["generate", "a red circle", "--out", str(tmp_path / "x.png"), "--steps", "1"]) == 0
    assert len(seen) == 5
    for neg in seen:
        assert neg is not None and torch.equal(neg, want)


def test_the_negative_is_computed_once_per_model_and_follows_dtype(loaded):
    a, b = loaded.negative_features(), loaded.negative_features()
    assert a is b and torch.equal(a, C.published_negative_features(loaded))
    half = copy.deepcopy(loaded).to(torch.bfloat16)
    c = half.negative_features()
    assert c.dtype == torch.bfloat16 and torch.equal(c, C.published_negative_features(half))


def test_new_vit_weights_give_a_new_negative(model):
    m = SeedX(model.config, model.tokenizer)
    m.load_state_dict(model.state_dict())
    m.config = SeedXConfig.from_dict({**model.config.to_dict(), "negative": "vit_zero_image"})
    before = m.negative_features().clone()
    with torch.no_grad():
        next(m.vit.parameters()).add_(0.5)
    assert not torch.equal(m.negative_features(), before)
    assert torch.equal(m.negative_features(), C.published_negative_features(m))


def test_seedx_tiny_keeps_the_negative_it_was_trained_with(shipped):
    tiny = shipped                                   # conftest: load("seedx-tiny"), once per session
    assert tiny.config.negative == "zeros" and tiny.config.detok.cond_drop_prob > 0
    assert torch.equal(tiny.negative_features(), torch.zeros(1, 64, tiny.config.vit.output_dim))
    # an image drawn by default equals one drawn with the de-tokenizer's own zero negative
    f = torch.randn(64, tiny.config.vit.output_dim, generator=torch.Generator().manual_seed(1))
    a = np.asarray(tiny.draw(f, num_inference_steps=3))
    g = torch.Generator().manual_seed(0)
    b = np.asarray(tiny.detok.sample(f[None], num_inference_steps=3, guidance_scale=tiny.config.guidance_scale,
                                     generator=g)[0])
    assert np.array_equal(a, b)


def test_an_old_config_without_the_field_loads_as_zeros(model):
    d = model.config.to_dict()
    assert d["negative"] == "zeros"
    del d["negative"]
    assert SeedXConfig.from_dict(json.loads(json.dumps(d)), strict=True).negative == "zeros"
    with pytest.raises(ValueError, match="negative must be one of"):
        SeedXConfig.from_dict({**model.config.to_dict(), "negative": "black"})


def test_a_bad_negative_is_named(loaded):
    f = torch.randn(64, loaded.config.vit.output_dim)
    with pytest.raises(ValueError, match="negative_features must be"):
        loaded.draw(f, num_inference_steps=1, negative_features=torch.zeros(64, 3))
    with pytest.raises(ValueError, match="negative_features must be"):
        loaded.draw(f, num_inference_steps=1, negative_features=[0.0])


def test_seedx_lab_json_may_keep_zeros_and_names_a_bad_value(root, tmp_path):
    import shutil

    d = tmp_path / "pretrained"
    shutil.copytree(root, d)
    cfg = json.loads((d / C.CONFIG_FILE).read_text())
    assert "negative" not in cfg["pipeline"]
    cfg["pipeline"]["negative"] = "zeros"
    (d / C.CONFIG_FILE).write_text(json.dumps(cfg))
    assert C.load_published(d).config.negative == "zeros"
    cfg["pipeline"]["negative"] = "black"
    (d / C.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="seedx_lab.json: pipeline.negative must be one of"):
        C.load_published(d)
