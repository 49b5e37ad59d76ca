"""Type B3 with N image tokens per block (``SeedXConfig.num_img_tokens``): the field, the model built with
it, training only the LLM lane from seedx-tiny, and the shipped 16-query checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seedx_lab import tokens as T
from seedx_lab.generation import AutoImageTokenGenerationProcessor
from seedx_lab.loading import DATA_DIR, load
from seedx_lab.model import SeedXConfig
from seedx_lab.training.config import TrainConfig, build_model

Q16 = DATA_DIR / "seedx-tiny-q16"


@pytest.fixture(scope="module")
def m16():
    return build_model(0, num_img_tokens=16).eval()


# --------------------------------------------------------------------------- the field

def test_config_without_the_field_is_64():
    d = json.loads((DATA_DIR / "seedx-tiny" / "config.json").read_text())
    assert "num_img_tokens" not in d                          # written before the field existed
    assert SeedXConfig.from_dict(d, strict=True).num_img_tokens == 64
    assert load("seedx-tiny").lvlm.num_img_tokens == 64


@pytest.mark.parametrize("bad", [0, 15, 32, 121, -16, True, "16", 16.0, None])
def test_bad_token_count_is_refused(bad):
    d = json.loads((DATA_DIR / "seedx-tiny" / "config.json").read_text())
    square = "num_img_tokens must be a square number of image tokens per block between 1 and 100"
    # a value of the wrong type is named by the type check of every loaded config, the rest by the field's own
    match = square if isinstance(bad, int) and not isinstance(bad, bool) else "num_img_tokens must be"
    with pytest.raises(ValueError, match=match):
        SeedXConfig.from_dict(dict(d, num_img_tokens=bad), strict=True)
    with pytest.raises(ValueError, match=square):
        TrainConfig(num_img_tokens=bad)


def test_init_and_only_go_together():
    with pytest.raises(ValueError, match="init and only go together"):
        TrainConfig(init="data/seedx-tiny")
    with pytest.raises(ValueError, match="init and only go together"):
        TrainConfig(only="llm")
    with pytest.raises(ValueError, match="only must be one of"):
        TrainConfig(init="data/seedx-tiny", only="vit")


# --------------------------------------------------------------------------- a model with 16 tokens per block

def test_prompts_hold_16_token_blocks(m16):
    assert m16.lvlm.num_img_tokens == 16 and m16.lvlm.num_out_features == 64
    assert tuple(m16.lvlm.input_resampler.query.shape)[0] == 16
    ids = m16.tokenizer.encode(m16.image_prompt(3), add_special_tokens=False)
    blocks = T.find_image_blocks(torch.tensor(ids), m16.token_ids)
    assert [(b.kind, b.n_tokens, b.complete) for b in blocks] == [("patch", 16, True)] * 2 + [("img", 16, True)]
    assert len(ids) == 3 * (16 + 2)


def test_forcing_processor_writes_16_then_eoi_on_random_logits(m16):
    tid = m16.token_ids
    V = m16.config.llm.vocab_size
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        proc = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=16)
        seq = torch.tensor([[1, 5, tid.boi]])
        for _ in range(17):
            scores = proc(seq, torch.randn(1, V, generator=g) * 5)
            seq = torch.cat([seq, scores.argmax(-1, keepdim=True)], 1)
        assert seq[0, 3:].tolist() == list(tid.img[:16]) + [tid.eoi]


@pytest.mark.parametrize("fast", [True, False])
def test_generation_forces_exactly_16_tokens(m16, fast):
    ids = torch.tensor([m16.encode_ids(T.generation_prompt("a big red circle at the top ."))])
    out = m16.lvlm.generate(ids, max_new_tokens=17, fast_forced_block=fast)
    tid = m16.token_ids
    assert out.new_tokens[0].tolist() == list(tid.img[:16]) + [tid.eoi]
    (img,) = out.images[0]
    assert tuple(img.hidden.shape) == (16, m16.config.llm.hidden_size)
    assert tuple(img.features.shape) == (64, m16.config.vit.output_dim)


def test_generate_image_and_describe_run(m16):
    r = m16.generate_image("a big red circle at the top .", num_inference_steps=2, seed=0)
    assert r.output.new_tokens.shape == (1, 17)
    assert tuple(r.features.shape) == (64, m16.config.vit.output_dim)
    assert r.image.size == (64, 64)
    assert isinstance(m16.describe(r.image, max_new_tokens=4), str)
    with pytest.raises(ValueError, match="needs 17 new tokens"):
        m16.generate("a story <img>", max_new_tokens=16)


def test_regression_target_is_the_64_pooled_features(m16):
    """16 hidden states -> 64 features, regressed onto the ViT's 256 tokens averaged 4 by 4 in raster order."""
    from seedx_lab.sequences import caption_pieces, collate, encode_pieces

    feats = torch.randn(2, 256, m16.config.vit.output_dim, generator=torch.Generator().manual_seed(1))
    batch = collate(m16, [encode_pieces(m16, caption_pieces("a red circle .", f)) for f in feats])
    out = m16.lvlm(**batch)
    want = feats.reshape(2, 64, 4, -1).mean(2)
    assert tuple(out["rec"].shape) == (2, 64, m16.config.vit.output_dim)
    torch.testing.assert_close(out["target"], want)
    torch.testing.assert_close(out["rec_loss"], torch.nn.functional.mse_loss(out["rec"], want))


def test_save_load_keeps_16(m16, tmp_path):
    m16.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_img_tokens"] == 16
    back = load(tmp_path / "m")
    assert back.lvlm.num_img_tokens == 16
    for k, v in m16.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


# --------------------------------------------------------------------------- training only the LLM lane

def test_init_keeps_everything_but_the_llm_lane(tmp_path):
    from seedx_lab.training.trainer import Trainer

    cfg = TrainConfig(init=str(DATA_DIR / "seedx-tiny"), only="llm", num_img_tokens=16,
                      work=str(tmp_path / "w"), out=str(tmp_path / "o"))
    tr = Trainer(cfg, progress=False)
    try:
        assert tr.done == ["vit", "vae", "vae_calibrated", "unet"]
        assert (tmp_path / "w" / "state.pt").is_file()          # what lanes and resumes start from
        src = load("seedx-tiny").state_dict()
        got = tr.model.state_dict()
        kept = [k for k in src if not k.startswith("lvlm.")]
        assert kept and all(torch.equal(src[k], got[k]) for k in kept)
        assert tr.model.lvlm.num_img_tokens == 16
        assert not torch.equal(src["lvlm.llm.lm_head.weight"], got["lvlm.llm.lm_head.weight"])   # fresh
        assert float(tr.model.detok.vae.config.scaling_factor) == float(load("seedx-tiny").detok.vae.config.scaling_factor)
    finally:
        tr.release()
    tr2 = Trainer(cfg, progress=False)                           # a second start resumes that state
    try:
        assert tr2.done == ["vit", "vae", "vae_calibrated", "unet"]
    finally:
        tr2.release()


# --------------------------------------------------------------------------- the shipped checkpoint

@pytest.fixture(scope="module")
def q16():
    if not (Q16 / "model.safetensors").is_file():
        pytest.skip("data/seedx-tiny-q16 is not shipped in this checkout")
    return load("seedx-tiny-q16")


def test_shipped_q16_writes_16_tokens(q16):
    assert q16.lvlm.num_img_tokens == 16
    assert Path(json.loads((Q16 / "train_config.json").read_text())["init"]).name == "seedx-tiny"
    r = q16.generate_image("a small green triangle on the left .", num_inference_steps=2)
    assert r.output.new_tokens[0].tolist() == list(q16.token_ids.img[:16]) + [q16.token_ids.eoi]


def test_shipped_q16_draws_better_than_untrained(q16):
    """Judged image_acc on a few held-out (test split) captions: the trained LLM lane beats the same model
    with its LLM lane as initialised (the ViT and de-tokenizer are the same in both)."""
    from seedx_lab.shapeworld.evaluate import image_accuracy

    fresh = build_model(0, num_img_tokens=16).eval()
    sd = q16.state_dict()
    sd.update({k: v for k, v in fresh.state_dict().items() if k.startswith("lvlm.")})
    untrained = build_model(0, num_img_tokens=16).eval()
    untrained.load_state_dict(sd)
    untrained.detok.vae.register_to_config(scaling_factor=q16.detok.vae.config.scaling_factor)
    seeds = list(range(8))
    trained_acc = image_accuracy(q16, seeds, "test", num_inference_steps=8)
    untrained_acc = image_accuracy(untrained, seeds, "test", num_inference_steps=8)
    assert trained_acc > untrained_acc, (trained_acc, untrained_acc)
