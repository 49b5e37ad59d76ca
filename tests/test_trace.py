"""seedx_lab.trace: captured values against direct recomputation, filters, memory limits, hook hygiene."""
import numpy as np
import pytest
import torch
from PIL import Image

import seedx_lab
from seedx_lab import tokens as T
from seedx_lab.model import SeedX, SeedXConfig
from seedx_lab.lab.trace import TraceMemoryError, estimate_bytes, estimate_shapes, names, trace

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

CAPTION = "a red circle"
BASELINE_HOOKS: dict = {}


@pytest.fixture(scope="module")
def model():
    tok = T.build_tokenizer("a red circle . here it is :".split())
    torch.manual_seed(0)
    m = SeedX(SeedXConfig.tiny(len(tok)), tok).eval()
    full_forward(m, torch.tensor([m.encode_ids(CAPTION)]))     # let transformers install its own hooks
    BASELINE_HOOKS.update(hook_table(m))
    assert any(fwd for fwd, _ in BASELINE_HOOKS.values())       # (so the check below is not vacuous)
    return m


@pytest.fixture(scope="module")
def image_run(model):
    """One generate_image run traced with everything (decisions included; still the one-pass path)."""
    with trace(model) as t:
        r = model.generate_image(CAPTION, num_inference_steps=2)
    return t, r


def hook_table(model):
    return {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}


def assert_no_hooks(model):
    """No hook of ours anywhere. transformers 5 installs its own output-capturing forward hooks on the
    LLM's decoder layers the first time ``output_hidden_states`` is used and keeps them: the LLM must hold
    exactly those (the ``model`` fixture installs them up front), every other module none at all."""
    for name, (fwd, pre) in hook_table(model).items():
        for fn in [*fwd.values(), *pre.values()]:
            assert getattr(fn, "__module__", "") != "seedx_lab.lab.trace", name
        if name.startswith("lvlm.llm"):
            assert (fwd, pre) == BASELINE_HOOKS[name], name
        else:
            assert not fwd and not pre, name
    assert model.lvlm.generation_observers == []
    assert "step" not in model.detok.scheduler.__dict__
    assert "set_timesteps" not in model.detok.scheduler.__dict__


@torch.no_grad()
def full_forward(model, seq):
    return model.lvlm.llm(input_ids=seq, output_hidden_states=True, use_cache=False)


def check_llm_against_full_forward(model, t, seq):
    """Every captured LLM state equals a plain forward of the whole sequence."""
    L = model.config.llm.num_hidden_layers
    hs = full_forward(model, seq).hidden_states            # embed, layers 0..L-2, final (normed)
    assert len(hs) == L + 1
    assert torch.equal(t["llm.token_ids"], seq)
    assert t["llm.embed"].shape == (1, seq.shape[1], model.config.llm.hidden_size)
    torch.testing.assert_close(t["llm.embed"], hs[0], atol=1e-4, rtol=1e-4)
    for i in range(L - 1):
        torch.testing.assert_close(t[f"llm.layers.{i}.hidden"], hs[i + 1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t["llm.final"], hs[-1], atol=1e-4, rtol=1e-4)
    # the last layer's raw output is not in hidden_states: normed, it is the final state
    torch.testing.assert_close(model.lvlm.llm.model.norm(t[f"llm.layers.{L - 1}.hidden"]), hs[-1], atol=1e-4, rtol=1e-4)


def test_generate_image_hidden_states_match_a_full_forward_across_the_kv_cache_loop(model, image_run):
    t, r = image_run
    seq = r.output.sequences
    T_prompt = r.output.prompt_length
    assert seq.shape[1] == T_prompt + 65
    # the prompt ends in <img>: prompt and forced block are one forward
    assert [p.shape[1] for p in t.pieces("llm.embed")[0]] == [T_prompt + 65]
    check_llm_against_full_forward(model, t, seq)
    # the 64 states the output resampler read are the final states at the block's image tokens
    img = r.output.images[0][0]
    torch.testing.assert_close(t["llm.final"][0, img.block.token_positions.start:img.block.token_positions.stop],
                               img.hidden, atol=1e-5, rtol=1e-5)


def test_step_by_step_states_match_a_full_forward_across_the_kv_cache_loop(model):
    ids = torch.tensor([model.encode_ids(T.generation_prompt(CAPTION))])
    with trace(model, capture=["llm.*", "processor.decisions"]) as t:
        out = model.lvlm.generate(ids, max_new_tokens=70, fast_forced_block=False)
    assert [p.shape[1] for p in t.pieces("llm.embed")[0]] == [ids.shape[1]] + [1] * (out.sequences.shape[1] - ids.shape[1])
    check_llm_against_full_forward(model, t, out.sequences)
    assert len(t["processor.decisions"]) == out.sequences.shape[1] - ids.shape[1]


@pytest.mark.parametrize("capture", [["llm.*"], ["llm.*", "processor.decisions"]])
def test_fast_forced_block_is_kept_whatever_is_captured(model, capture):
    with trace(model, capture=capture) as t:
        r = model.generate_image(CAPTION, num_inference_steps=1)
    seq = r.output.sequences
    # caption -> image is one LLM pass: the prompt (ending in <img>) and its forced block together
    assert [p.shape[1] for p in t.pieces("llm.final")[0]] == [r.output.prompt_length + 65]
    check_llm_against_full_forward(model, t, seq)


def test_resampler_and_pool_attention_shapes_rows_and_values(model, image_run):
    t, r = image_run
    heads = model.config.resampler_heads
    a = t["output_resampler.attn"]
    assert a.shape == (1, heads, 64, 64)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, heads, 64))
    out, attn = model.lvlm.output_resampler(r.output.images[0][0].hidden[None], return_attn=True)
    torch.testing.assert_close(a, attn)
    torch.testing.assert_close(t["output_resampler.out"][0], r.features)
    dc = model.config.detok
    rows = 2 if model.config.guidance_scale > 1 else 1                # guidance: the null features ride along
    for l in range(dc.depth):
        d = t[f"detok.resampler.attn.{l}"]
        assert d.shape == (rows, dc.heads, 64, 64 + 64)               # keys = 64 inputs + 64 latents
        torch.testing.assert_close(d.sum(-1), torch.ones(rows, dc.heads, 64))


def test_describe_captures_vit_and_input_resampler(model):
    img = Image.fromarray((np.random.default_rng(0).random((64, 128, 3)) * 255).astype("uint8"))  # 2:1 -> tiles
    with trace(model, capture=["vit.*", "input_resampler.*"]) as t:
        model.describe(img, max_new_tokens=2)
    feats, pos, tiles = model.encode_image(img)
    views = len(tiles)
    assert views > 1
    heads = model.config.resampler_heads
    a = t["input_resampler.attn"]
    assert a.shape == (views, heads, 64, 256)
    torch.testing.assert_close(a.sum(-1), torch.ones(views, heads, 64))
    _, attn = model.lvlm.input_resampler(feats, return_attn=True)
    torch.testing.assert_close(a, attn)
    torch.testing.assert_close(t["vit.out"], feats)
    vc = model.config.vit
    assert t["vit.attn_pool.attn"].shape == (views, vc.pool_heads, 256, 256)
    assert t["vit.blocks.0"].shape == (views, 256, vc.width)
    # estimate_shapes predicts exactly these
    est = estimate_shapes(model, capture=["vit.*", "input_resampler.*"], views=views)
    assert {k: v[0] for k, v in est.items()} == t.shapes()


def test_decisions_reproduce_the_forced_block_and_p_boi(model, image_run):
    t, r = image_run
    seq = r.output.sequences[0]
    T_prompt = r.output.prompt_length
    dec = t["processor.decisions"]
    assert [d["step"] for d in dec] == list(range(65))
    assert [d["forced_id"] for d in dec] == seq[T_prompt:].tolist()
    assert [d["state"] for d in dec] == ["inside"] * 64 + ["closing"]
    assert {d["call"] for d in dec} == {0} and {d["row"] for d in dec} == {0}
    # p_boi before processing = softmax of a plain forward's logits at the position that predicts
    logits = full_forward(model, r.output.sequences).logits[0].float()
    want = logits.softmax(-1)[T_prompt - 1: T_prompt + 64, model.token_ids.boi]
    np.testing.assert_allclose([d["p_boi"] for d in dec], want.numpy(), rtol=1e-4, atol=1e-6)


def test_user_processor_record_flag_and_list_are_restored(model):
    from seedx_lab.generation import AutoImageTokenGenerationProcessor

    ids = torch.tensor([model.encode_ids(T.generation_prompt(CAPTION))])
    p = AutoImageTokenGenerationProcessor(token_ids=model.token_ids, mode="strict")
    with trace(model, capture=["processor.decisions"]) as t:
        model.lvlm.generate(ids, max_new_tokens=65, logits_processor=[p])
        assert p.record
    assert not p.record and p.decisions == []
    assert len(t["processor.decisions"]) == 65


def test_diffusion_steps_equal_what_a_callback_receives(model, image_run):
    feats = image_run[1].features
    seen = []
    with trace(model, capture=["detok.step.*"]) as t:
        model.draw(feats, num_inference_steps=3, seed=7,
                   callback=lambda i, ts, lat, npred: seen.append((i, ts.clone(), lat.clone(), npred.clone())))
    assert [s[0] for s in seen] == [0, 1, 2]
    assert len(t) == 12
    for i, ts, lat, npred in seen:
        assert torch.equal(t[f"detok.step.{i}.timestep"], ts)
        assert torch.equal(t[f"detok.step.{i}.latents"], lat)
        assert torch.equal(t[f"detok.step.{i}.noise_pred"], npred)
    # Euler's last step goes to sigma 0, where the step lands on its own clean estimate: x0 = latents
    torch.testing.assert_close(t["detok.step.2.pred_original_sample"], t["detok.step.2.latents"])
    assert not torch.allclose(t["detok.step.0.pred_original_sample"], t["detok.step.0.latents"], atol=1e-3)
    assert model.detok.step_callbacks == [] and "step" not in model.detok.scheduler.__dict__
    # no callback, straight through Detokenizer.sample: the steps are still captured, same numbers
    with trace(model, capture=["detok.step.*"]) as t2:
        model.detok.sample(feats[None], num_inference_steps=3, guidance_scale=model.config.guidance_scale,
                           generator=torch.Generator().manual_seed(7), output_type="latent")
    for k in t.keys():
        assert torch.equal(t[k], t2[k])
    assert_no_hooks(model)


def test_filters_keep_only_the_names_asked(model):
    with trace(model, capture=["llm.layers.*", "output_resampler.attn"], layers=[1, -1]) as t:
        model.generate_image(CAPTION, num_inference_steps=1)
    assert sorted(t.keys()) == ["llm.layers.1.hidden", "llm.layers.3.hidden", "output_resampler.attn"]
    assert "processor.decisions" not in t and "llm.final" not in t
    with pytest.raises(KeyError, match="was not captured"):
        t["llm.final"]
    with pytest.raises(ValueError, match="matches no name"):
        trace(model, capture=["llm.layer.*"])
    with pytest.raises(ValueError, match="out of range"):
        trace(model, layers=[17])
    assert "llm.layers.3.hidden" in names(model) and "detok.step.24.timestep" in names(model)


def test_to_cpu_and_dtype_are_respected(model, image_run):
    t32 = image_run[0]
    with trace(model, capture=["llm.*", "output_resampler.attn"], dtype=torch.float16, to_cpu=False) as t:
        model.generate_image(CAPTION, num_inference_steps=1)
    assert t["llm.token_ids"].dtype == torch.int64
    for k in ("llm.final", "llm.layers.0.hidden", "output_resampler.attn"):
        assert t[k].dtype == torch.float16 and t[k].device.type == "cpu"
        torch.testing.assert_close(t[k].float(), t32[k], atol=2e-2, rtol=1e-2)
    assert t.nbytes == sum(v.numel() * v.element_size() for k, v in t.items())


def test_estimate_matches_the_capture_and_memory_limits(model, image_run):
    t, r = image_run
    seq_len = r.output.sequences.shape[1]
    est = estimate_shapes(model, seq_len=seq_len, images=1, steps=2)
    shapes = t.shapes()
    shapes.pop("processor.decisions")
    assert {k: v[0] for k, v in est.items()} == shapes
    assert all(t[k].dtype == v[1] for k, v in est.items())
    n = estimate_bytes(model, seq_len=seq_len, images=1, steps=2)
    assert n == t.nbytes
    # refused up front: the message carries the estimate
    with pytest.raises(TraceMemoryError, match=f"{n} bytes"):
        with trace(model, max_bytes=n - 1, expect=dict(seq_len=seq_len, images=1, steps=2)):
            raise AssertionError("body must not run")
    assert issubclass(TraceMemoryError, MemoryError)
    assert_no_hooks(model)
    # no hint given: stopped while running, hooks gone, nothing beyond the limit kept
    with pytest.raises(TraceMemoryError, match="exceeded max_bytes=20000"):
        with trace(model, capture=["llm.*"], max_bytes=20_000) as t2:
            model.generate_image(CAPTION, num_inference_steps=1)
    assert 0 < t2.nbytes <= 20_000
    assert_no_hooks(model)


def test_hooks_removed_after_an_exception_and_after_nested_traces(model):
    ids = torch.tensor([model.encode_ids(CAPTION)])
    with pytest.raises(RuntimeError, match="boom"):
        with trace(model) as t:
            model.lvlm.llm(input_ids=ids)
            raise RuntimeError("boom")
    assert "llm.final" in t
    assert_no_hooks(model)

    with trace(model, capture=["llm.final", "processor.decisions"]) as outer:
        with trace(model, capture=["llm.*", "detok.step.*", "processor.decisions"]) as inner:
            r = model.generate_image(CAPTION, num_inference_steps=2)
        model.lvlm.llm(input_ids=ids)                  # only the outer trace sees this run
    assert_no_hooks(model)
    assert len(outer.pieces("llm.final")) == 2 and len(inner.pieces("llm.final")) == 1
    torch.testing.assert_close(torch.cat(outer.pieces("llm.final")[0], 1), inner["llm.final"])
    assert outer["processor.decisions"] == inner["processor.decisions"] and len(inner["processor.decisions"]) == 65
    assert "detok.step.1.latents" in inner and "detok.step.1.latents" not in outer
    assert isinstance(outer["llm.final"], list)        # two runs of different lengths stay apart
    with pytest.raises(RuntimeError, match="entered once"):
        with outer:
            pass


def test_the_package_attribute_is_the_callable_module(model):
    assert seedx_lab.trace.estimate_bytes is estimate_bytes
    with seedx_lab.trace(model, capture="llm.final") as t:
        model.lvlm.llm(input_ids=torch.tensor([model.encode_ids(CAPTION)]))
    assert t.keys() == ["llm.final"] and len(t) == 1
