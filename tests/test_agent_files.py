"""Agent files as the published code saves them: from the whole agent (``llm.*`` with each layer's rotary
``inv_freq`` buffer) and from its LoRA training recipe (peft names). Each file is written here and the
loaded LLM weights are compared with an independent computation of what they must be."""
import json

import pytest
import torch

from seedx_lab import tokens as T
from seedx_lab.model import SeedX, SeedXConfig
from seedx_lab.published import checkpoints as C

WORDS = "a red circle . here it is :".split()
PEFT = "llm.base_model.model."


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


def with_agent(root, tmp_path, extra: dict, adapter_config: dict | None = None):
    """The layout of ``root`` with an agent file that also holds ``extra`` (and maybe peft's adapter_config.json)."""
    src = C.PublishedPaths.from_root(root, env={}).agent
    state = dict(torch.load(src, map_location="cpu", weights_only=True))
    state.update(extra)
    dst = tmp_path / "agent" / "pytorch_model.bin"
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    if adapter_config is not None:
        (dst.parent / "adapter_config.json").write_text(json.dumps(adapter_config))
    return C.PublishedPaths.from_root(root, env={C.ENV["agent"]: str(dst)}), dst


def inv_freq(model):
    """LLaMA's rotary frequencies computed here: theta^(-2i/d) for i < d/2."""
    c = model.config.llm
    d = c.hidden_size // c.num_attention_heads
    return torch.tensor([c.rope_theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float32)


def test_a_file_saved_from_the_whole_agent_loads(root, tmp_path, model):
    g = torch.Generator().manual_seed(7)
    other = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in model.lvlm.llm.state_dict().items()}
    extra = {"llm." + k: v for k, v in other.items()}
    layers = model.config.llm.num_hidden_layers
    extra.update({f"llm.model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq(model) for i in range(layers)})
    paths, _ = with_agent(root, tmp_path, extra)
    m = C.load_published(paths=paths)
    got = m.lvlm.llm.state_dict()
    assert all(torch.equal(got[k], v) for k, v in other.items())        # the file's weights, not the folder's
    assert not torch.equal(got["model.norm.weight"], model.lvlm.llm.state_dict()["model.norm.weight"])


def test_a_bf16_rotary_buffer_is_accepted(root, tmp_path, model):
    paths, _ = with_agent(root, tmp_path, {"llm.model.layers.0.self_attn.rotary_emb.inv_freq": inv_freq(model).bfloat16()})
    C.load_published(paths=paths)


def test_a_wrong_rotary_buffer_names_the_key_and_the_file(root, tmp_path, model):
    key = "llm.model.layers.2.self_attn.rotary_emb.inv_freq"
    wrong = inv_freq(model).clone()
    wrong[5] *= 1.01                                   # e.g. a checkpoint of another rope_theta or scaling
    paths, dst = with_agent(root, tmp_path, {key: wrong})
    with pytest.raises(ValueError, match="rotary frequencies") as e:
        C.load_published(paths=paths)
    assert key in str(e.value) and str(dst) in str(e.value)


def _lora_file(model, r=4, seed=3):
    """peft's keys for LoRA on q_proj and down_proj of layer 1 (base_layer given for down_proj only), and a
    modules_to_save copy of the final norm."""
    g = torch.Generator().manual_seed(seed)
    sd = model.lvlm.llm.state_dict()
    q, down = "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"
    out = {}
    for mod in (q, down):
        o, i = sd[mod + ".weight"].shape
        out[f"{PEFT}{mod}.lora_A.default.weight"] = torch.randn(r, i, generator=g)
        out[f"{PEFT}{mod}.lora_B.default.weight"] = torch.randn(o, r, generator=g)
    out[f"{PEFT}{down}.base_layer.weight"] = torch.randn(sd[down + ".weight"].shape, generator=g)
    out[f"{PEFT}model.norm.original_module.weight"] = sd["model.norm.weight"]
    out[f"{PEFT}model.norm.modules_to_save.default.weight"] = torch.full_like(sd["model.norm.weight"], 1.5)
    return out, q, down


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_weights_are_merged_into_the_llm(root, tmp_path, model, rslora):
    extra, q, down = _lora_file(model)
    paths, _ = with_agent(root, tmp_path, extra, dict(r=4, lora_alpha=8, use_rslora=rslora, peft_type="LORA"))
    m = C.load_published(paths=paths)
    scale = 8 / 2 if rslora else 8 / 4
    sd, got = model.lvlm.llm.state_dict(), m.lvlm.llm.state_dict()

    def delta(mod):
        a, b = extra[f"{PEFT}{mod}.lora_A.default.weight"], extra[f"{PEFT}{mod}.lora_B.default.weight"]
        return scale * torch.einsum("or,ri->oi", b, a)

    torch.testing.assert_close(got[q + ".weight"], sd[q + ".weight"] + delta(q))               # on the folder's W
    torch.testing.assert_close(got[down + ".weight"], extra[f"{PEFT}{down}.base_layer.weight"] + delta(down))
    assert torch.equal(got["model.norm.weight"], torch.full_like(sd["model.norm.weight"], 1.5))
    untouched = "model.layers.1.self_attn.k_proj.weight"
    assert torch.equal(got[untouched], sd[untouched])


def test_lora_without_its_config_says_how_to_merge(root, tmp_path, model):
    extra, _, _ = _lora_file(model)
    paths, dst = with_agent(root, tmp_path, extra)
    with pytest.raises(ValueError, match="holds LoRA weights.*merge_and_unload") as e:
        C.load_published(paths=paths)
    assert str(dst) in str(e.value)


def test_lora_config_of_another_rank_is_refused(root, tmp_path, model):
    extra, _, _ = _lora_file(model, r=4)
    paths, _ = with_agent(root, tmp_path, extra, dict(r=16, lora_alpha=32))
    with pytest.raises(ValueError, match="r=16.*rank"):
        C.load_published(paths=paths)


def test_a_lora_half_pair_is_unexpected(root, tmp_path, model):
    extra, q, _ = _lora_file(model)
    del extra[f"{PEFT}{q}.lora_B.default.weight"]
    paths, _ = with_agent(root, tmp_path, extra, dict(r=4, lora_alpha=8))
    with pytest.raises(ValueError, match=f"unexpected.*{q}.lora_A"):
        C.load_published(paths=paths)


@pytest.mark.parametrize("key", ["llm.model.layers.0.self_attn.q_proj.scales", f"{PEFT}model.nonsense.weight",
                                 "llm.lm_head.lora_magnitude_vector"])
def test_anything_else_is_an_error_naming_the_key_and_the_file(root, tmp_path, key):
    paths, dst = with_agent(root, tmp_path, {key: torch.zeros(3)})
    with pytest.raises(ValueError, match="unexpected") as e:
        C.load_published(paths=paths)
    assert key in str(e.value) and str(dst) in str(e.value)
