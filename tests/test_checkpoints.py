"""Published-layout checkpoints: write a tiny SeedX as SEED-X's release is laid out, read it back.

The round trip goes through the same strict loader a real ``pretrained/`` folder goes through, so a
key or a file name that drifts from the published one fails here.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import seedx_lab
from seedx_lab.published import checkpoints as C
from seedx_lab import tokens as T
from seedx_lab.cli import main as cli_main
from seedx_lab.model import SeedX, SeedXConfig

WORDS = "a red circle . here it is :".split()
PARTS = ("llm", "agent", "vit", "detok", "sdxl", "tokenizer")


@pytest.fixture(scope="module")
def model():
    tok = T.build_tokenizer(WORDS)
    torch.manual_seed(0)
    return SeedX(SeedXConfig.tiny(len(tok)), tok).eval()


@pytest.fixture(scope="module")
def root(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrained")
    C.write_published_layout(model, d)
    return d


@pytest.fixture(scope="module")
def loaded(root):
    return C.load_published(root)


def _ids(model, text="a red circle here it is"):
    return torch.tensor([model.encode_ids(text)])


def _with_file(root, tmp_path, part, edit, **env):
    """Paths of ``root`` with one part's file replaced by an edited copy (an override, as $SEEDX_<PART>)."""
    src = getattr(C.PublishedPaths.from_root(root, env={}), part)
    state = dict(torch.load(src, map_location="cpu", weights_only=True))
    edit(state)
    dst = tmp_path / src.name
    torch.save(state, dst)
    return C.PublishedPaths.from_root(root, env={C.ENV[part]: str(dst), **env}), dst


# --------------------------------------------------------------------------- layout and round trip

def test_written_files_carry_the_published_names(root):
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for name in ("seed_x/llm/config.json", "seed_x/llm/model.safetensors", "seed_x/agent/pytorch_model.bin",
                 "QwenViT/qwen_vit_G.pt", "seed_detokenizer/first_stage/pytorch_model.bin",
                 "stable-diffusion-xl-base-1.0/unet/config.json", "stable-diffusion-xl-base-1.0/vae/config.json",
                 "stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json",
                 "cvlm_llama2_tokenizer_100img_and_224loc_addpatch/tokenizer.json", "seedx_lab.json"):
        assert name in files, name
    agent = torch.load(root / "seed_x/agent/pytorch_model.bin", weights_only=True)
    assert {k.split(".")[0] for k in agent} == {"input_resampler", "output_resampler", "patch_pos_embed"}
    assert agent["patch_pos_embed"].shape == (4, 128)
    vit = torch.load(root / "QwenViT/qwen_vit_G.pt", weights_only=True)
    assert "conv1.weight" in vit and "attn_pool.query" in vit and "transformer.resblocks.0.attn.in_proj.weight" in vit
    detok = torch.load(root / "seed_detokenizer/first_stage/pytorch_model.bin", weights_only=True)
    assert {k.split(".")[0] for k in detok} == {"resampler", "unet"}
    assert C.is_published_layout(root) and not C.is_published_layout(root / "QwenViT")


def test_round_trip_gives_identical_outputs(model, loaded):
    assert type(loaded) is SeedX and loaded.dtype == torch.float32
    ids = _ids(model)
    assert torch.equal(model.lvlm.llm(ids).logits, loaded.lvlm.llm(ids).logits)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.vit(pixels), loaded.vit(pixels))
    feats = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(2))
    a = model.detok.sample(feats, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt")
    b = loaded.detok.sample(feats, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.equal(a, b)
    r1 = model.generate_image("a red circle", num_inference_steps=2, seed=4)
    r2 = loaded.generate_image("a red circle", num_inference_steps=2, seed=4)
    assert torch.equal(r1.features, r2.features) and torch.equal(r1.output.sequences, r2.output.sequences)
    # the loaded model guides with the published negative (the ViT of a zero image), the native one with zeros
    assert (model.config.negative, loaded.config.negative) == ("zeros", "vit_zero_image")
    same = model.draw(r1.features, num_inference_steps=2, seed=4, negative_features=C.published_negative_features(model))
    assert np.array_equal(np.asarray(same), np.asarray(r2.image))
    assert not np.array_equal(np.asarray(r1.image), np.asarray(r2.image))
    img = Image.new("RGB", (120, 60), (200, 20, 20))
    assert model.describe(img, max_new_tokens=6) == loaded.describe(img, max_new_tokens=6)
    vit_feats = torch.randn(2, 256, 64, generator=torch.Generator().manual_seed(5))   # the place bias travels too
    assert model.config.input_locality > 0
    assert torch.equal(model.lvlm.input_resampler(vit_feats), loaded.lvlm.input_resampler(vit_feats))


def test_a_loaded_model_does_not_alias_its_files(model, root, tmp_path):
    copy = tmp_path / "pretrained"
    shutil.copytree(root, copy)
    m = C.load_published(copy)
    for f in copy.rglob("*"):
        if f.suffix in (".bin", ".pt", ".safetensors"):
            f.write_bytes(b"")                              # a mapped tensor would now crash the process (SIGBUS)
    ids = _ids(model)
    assert torch.equal(m.lvlm.llm(ids).logits, model.lvlm.llm(ids).logits)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(m.vit(x), model.vit(x))
    f = torch.randn(1, 64, 64)
    assert torch.equal(m.detok.sample(f, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt"),
                       model.detok.sample(f, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt"))


def test_lora_weights_in_the_agent_get_a_hint(root, tmp_path):
    key = "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    paths, _ = _with_file(root, tmp_path, "agent", lambda s: s.update({key: torch.zeros(8, 128)}))
    with pytest.raises(ValueError, match="holds LoRA weights.*merge_and_unload"):
        C.load_published(paths=paths)


def test_published_prompts():
    assert C.published_prompt("seed_x", "generate", "a cat") == "a cat<img>"
    assert C.published_prompt("seed_x_i", "generate", "a cat") == "[INST] Generate an image: a cat [/INST]\n"
    assert C.published_prompt("seed_x", "describe", "What?", "<img>x</img>") == "Question: <img>x</img>What?\nAnswer:"
    assert C.published_prompt("seed_x_i", "describe", "What?", "<img>x</img>") == "[INST] <img>x</img>What? [/INST]\n"
    with pytest.raises(ValueError, match="task must be"):
        C.published_prompt("seed_x", "edit", "x")


def test_configs_survive_the_round_trip(model, loaded):
    c, d = model.config, loaded.config
    assert d.vit == c.vit
    assert (d.tile_size, d.resampler_heads, d.add_patch_pos, d.target_pool) == (c.tile_size, c.resampler_heads, c.add_patch_pos, c.target_pool)
    assert (d.num_inference_steps, d.guidance_scale, d.rec_loss_scale) == (c.num_inference_steps, c.guidance_scale, c.rec_loss_scale)
    assert d.llm.hidden_size == c.llm.hidden_size and d.llm.vocab_size == c.llm.vocab_size
    assert loaded.detok.vae.config.scaling_factor == model.detok.vae.config.scaling_factor
    assert loaded.lvlm.input_resampler.config == model.lvlm.input_resampler.config
    assert (d.input_locality, d.input_local_heads) == (c.input_locality, c.input_local_heads)
    assert loaded.lvlm.output_resampler.config == model.lvlm.output_resampler.config


def test_seedx_lab_load_dispatches_on_the_layout_and_on_names(root, model, monkeypatch):
    ids = _ids(model)
    m = seedx_lab.load(str(root))
    assert torch.equal(m.lvlm.llm(ids).logits, model.lvlm.llm(ids).logits)
    monkeypatch.setenv("SEEDX_ROOT", str(root))
    m = seedx_lab.load("seed-x")
    assert torch.equal(m.lvlm.llm(ids).logits, model.lvlm.llm(ids).logits)
    with pytest.raises(FileNotFoundError, match=r"seed_x_i/agent/pytorch_model\.bin"):
        seedx_lab.load("seed-x-i")


def test_device_map_is_refused_for_a_native_model(tmp_path, model):
    model.save(tmp_path / "native")
    with pytest.raises(ValueError, match="device_map applies to published"):
        seedx_lab.load(tmp_path / "native", device_map="auto")


def test_bf16_load_on_cpu(root, model):
    m = C.load_published(root, dtype=torch.bfloat16)
    dtypes = {t.dtype for t in m.state_dict().values() if t.is_floating_point()}
    assert dtypes == {torch.bfloat16}                       # (LLaMA's rotary inv_freq stays fp32: not a weight)
    ids = _ids(model)
    ref = model.lvlm.llm(ids).logits
    got = m.lvlm.llm(ids).logits.float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    r = m.generate_image("a red circle", num_inference_steps=2)
    assert r.features.dtype == torch.bfloat16 and r.features.shape == (64, 64) and torch.isfinite(r.features).all()


def test_fp16_keeps_an_upcast_vae_in_float32(root, tmp_path):
    sdxl = tmp_path / "sdxl"
    shutil.copytree(C.PublishedPaths.from_root(root, env={}).sdxl, sdxl)
    cfg = json.loads((sdxl / "vae/config.json").read_text())
    (sdxl / "vae/config.json").write_text(json.dumps(dict(cfg, force_upcast=True)))
    m = C.load_published(paths=C.PublishedPaths.from_root(root, env={"SEEDX_SDXL": str(sdxl)}), dtype=torch.float16)
    assert m.detok.vae.dtype == torch.float32 and m.detok.unet.dtype == torch.float16 and m.dtype == torch.float16


# --------------------------------------------------------------------------- named errors

def test_missing_agent_key_is_named_with_its_file(root, tmp_path):
    paths, f = _with_file(root, tmp_path, "agent", lambda s: s.pop("input_resampler.query"))
    with pytest.raises(ValueError, match=r"missing 1 key\(s\) \[input_resampler\.query\]; unexpected 0") as e:
        C.load_published(paths=paths)
    assert str(f) in str(e.value)


def test_bogus_agent_key_is_unexpected(root, tmp_path):
    paths, f = _with_file(root, tmp_path, "agent", lambda s: s.update({"bogus.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"missing 0 key\(s\) \[\]; unexpected 1 key\(s\) \[bogus\.weight\]") as e:
        C.load_published(paths=paths)
    assert str(f) in str(e.value)


def test_agent_shape_mismatch_names_both_shapes(root, tmp_path):
    paths, f = _with_file(root, tmp_path, "agent", lambda s: s.update(patch_pos_embed=torch.zeros(4, 7)))
    with pytest.raises(ValueError, match=r"patch_pos_embed: file \(4, 7\) vs model \(4, 128\)") as e:
        C.load_published(paths=paths)
    assert str(f) in str(e.value)


def test_llm_keys_in_the_agent_overwrite_the_llm_folder(root, tmp_path, model):
    paths, _ = _with_file(root, tmp_path, "agent", lambda s: s.update({"llm.model.norm.weight": torch.full((128,), 2.0)}))
    m = C.load_published(paths=paths)
    assert torch.equal(m.lvlm.llm.model.norm.weight, torch.full((128,), 2.0))
    assert not torch.equal(m.lvlm.llm(_ids(model)).logits, model.lvlm.llm(_ids(model)).logits)
    bad, _ = _with_file(root, tmp_path, "agent", lambda s: s.update({"llm.model.nonsense": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\) \[llm\.model\.nonsense\]"):
        C.load_published(paths=bad)


def test_vit_missing_key_names_the_vit_file(root, tmp_path):
    paths, f = _with_file(root, tmp_path, "vit", lambda s: s.pop("ln_post.bias"))
    with pytest.raises(ValueError, match=r"qwen_vit_G\.pt: keys do not match the Qwen-VL visual encoder.*\[ln_post\.bias\]"):
        C.load_published(paths=paths)


def test_detokenizer_needs_its_resampler_but_not_its_unet_copy(root, tmp_path, model):
    def drop_unet(s):
        for k in [k for k in s if k.startswith("unet.")]:
            del s[k]
    paths, _ = _with_file(root, tmp_path, "detok", drop_unet)
    m = C.load_published(paths=paths)                       # the UNet then comes from the SDXL folder alone
    feats = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(5))
    g = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    assert torch.equal(m.detok.sample(feats, num_inference_steps=1, generator=g(), output_type="latent"),
                       model.detok.sample(feats, num_inference_steps=1, generator=g(), output_type="latent"))
    paths, f = _with_file(root, tmp_path, "detok", lambda s: s.pop("resampler.latents"))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: keys do not match the de-tokenizer.*\[resampler\.latents\]"):
        C.load_published(paths=paths)


def test_llm_folder_with_a_missing_weight_is_an_error(root, tmp_path):
    from safetensors.torch import load_file, save_file

    llm = tmp_path / "llm"
    shutil.copytree(C.PublishedPaths.from_root(root, env={}).llm, llm)
    state = load_file(llm / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, llm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"LLaMA weights do not match.*missing \[model\.norm\.weight\]"):
        C.load_published(paths=C.PublishedPaths.from_root(root, env={"SEEDX_LLM": str(llm)}))


def test_missing_file_is_named(root, tmp_path):
    gone = tmp_path / "nowhere" / "qwen_vit_G.pt"
    with pytest.raises(FileNotFoundError, match=f"vit: {gone} not found"):
        C.load_published(paths=C.PublishedPaths.from_root(root, env={"SEEDX_VIT": str(gone)}))


def test_folders_without_weights_are_named(root, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(C.PublishedPaths.from_root(root, env={}).llm, llm)
    (llm / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"llm: no weights in {llm} "):
        C.load_published(paths=C.PublishedPaths.from_root(root, env={"SEEDX_LLM": str(llm)}))


def test_empty_root_lists_every_part(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        C.load_published(tmp_path)
    msg = str(e.value)
    for rel in ("seed_x/llm/config.json", "seed_x/agent/pytorch_model.bin", "QwenViT/qwen_vit_G.pt",
                "seed_detokenizer/first_stage/pytorch_model.bin", "stable-diffusion-xl-base-1.0/unet/config.json",
                "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"):
        assert str(tmp_path / rel) in msg, rel


def test_no_root_and_no_variables_says_which_to_set():
    problems = C.PublishedPaths.from_root(None, env={}).problems()
    assert len(problems) == len(PARTS)
    assert all("SEEDX_ROOT" in p for p in problems) and any("SEEDX_DETOK" in p for p in problems)


def test_corrupt_checkpoint_is_a_value_error(tmp_path):
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a PyTorch state dict"):
        C.read_state_dict(f)


def test_tokenizer_without_the_image_tokens_is_refused(root, tmp_path):
    tok = T.build_tokenizer(WORDS, num_img_tokens=10)        # lacks <img_00010> … <img_00063>
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="lacks 54 SEED-X special token"):
        C.load_published(paths=C.PublishedPaths.from_root(root, env={"SEEDX_TOKENIZER": str(tmp_path / "tok")}))


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown SEED-X variant 'seed_x_edit'"):
        C.PublishedPaths.from_root(tmp_path, "seed_x_edit")


# --------------------------------------------------------------------------- CLI and helpers

def test_cli_convert_writes_a_loadable_layout(tmp_path, model, capsys):
    model.save(tmp_path / "native")
    out = tmp_path / "published"
    assert cli_main(["convert", "--to-published", str(out), "--model", str(tmp_path / "native"), "--variant", "seed_x_i"]) == 0
    assert "published SEED-X layout" in capsys.readouterr().out
    assert (out / "seed_x_i/agent/pytorch_model.bin").is_file()
    m = seedx_lab.load(out)
    assert torch.equal(m.lvlm.llm(_ids(model)).logits, model.lvlm.llm(_ids(model)).logits)
    assert cli_main(["convert", "--to-published", str(out), "--model", str(tmp_path / "absent")]) == 2


def test_published_negative_features_are_the_pooled_zero_image(model):
    neg = C.published_negative_features(model)
    assert neg.shape == (1, 64, 64)
    full = model.vit(torch.zeros(1, 3, 64, 64))
    assert torch.allclose(neg[0, 3], full[0, 12:16].mean(0))


def test_published_parameter_counts():
    n = C.parameter_counts()
    assert n["llm"] == 13_015_864_320 + 2 * 330 * 5120     # LLaMA-2-13B + 330 tokens in embedding and head
    assert 1.9e9 < n["vit"] < 2.0e9 and 2.5e9 < n["unet"] < 2.6e9
    assert 17e9 < sum(n.values()) < 18.5e9                 # "SEED-X-17B"
