"""seedx_lab.trace edits: identity and self-patching change nothing, patching a layer transplants the
downstream computation (prompt pass and KV-cache loop), knockout against an independent recomputation,
capture sees the edited value, positions are absolute, and nothing stays installed after an error."""
import pytest
import torch

from seedx_lab import tokens as T
from seedx_lab.lab import trace as tr
from seedx_lab.model import SeedX, SeedXConfig

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning",
                                        "ignore::UserWarning")

WORDS = "a red circle blue square . here it is :".split()
A = "a red circle . here it is :"
B = "a blue square . here it is :"


@pytest.fixture(scope="module")
def model():
    tok = T.build_tokenizer(WORDS)
    torch.manual_seed(0)
    m = SeedX(SeedXConfig.tiny(len(tok)), tok).eval()
    with torch.no_grad():
        m.lvlm.llm(input_ids=ids(m, A), output_hidden_states=True)   # transformers' own hooks, installed once
    return m


def ids(m, text):
    return torch.tensor([m.encode_ids(text)])


def hooks(m):
    return {n: (dict(x._forward_hooks), dict(x._forward_pre_hooks)) for n, x in m.named_modules()}


def attn_impl(m):
    return m.lvlm.llm.config._attn_implementation


@torch.no_grad()
def gen(m, x, n=12, **kw):
    tok = m.tokenizer
    return m.lvlm.generate(x, max_new_tokens=n, eos_token_id=None, pad_token_id=tok.pad_token_id, **kw)


@torch.no_grad()
def test_identity_edits_change_nothing_bit_for_bit(model):
    plain = model.generate_image("a red circle", num_inference_steps=2, seed=0)
    ident = {"*": lambda v, ctx: v, "llm.layers.*.hidden": tr.scale(1.0)}
    with tr.trace(model, capture=[], edits=ident):
        edited = model.generate_image("a red circle", num_inference_steps=2, seed=0)
    assert torch.equal(plain.output.sequences, edited.output.sequences)
    assert torch.equal(plain.features, edited.features)
    assert (plain.image is None) or (list(plain.image.getdata()) == list(edited.image.getdata()))
    x = ids(model, A)
    ref = gen(model, x)
    with tr.trace(model, capture=[], edits={"llm.*": lambda v, ctx: v, "llm.layers.*.attn": tr.knockout([])}):
        out = gen(model, x)
    assert torch.equal(ref.sequences, out.sequences) and torch.equal(ref.hidden, out.hidden)


@torch.no_grad()
def test_patching_a_run_with_its_own_capture_changes_nothing(model):
    x = ids(model, A)
    with tr.trace(model, capture=["llm.*"]) as t:
        ref = model.lvlm.llm(input_ids=x).logits
    with tr.trace(model, capture=[], edits={"llm.embed": tr.patch_from(t), "llm.layers.*.hidden": tr.patch_from(t)}):
        out = model.lvlm.llm(input_ids=x).logits
    assert torch.equal(ref, out)


@torch.no_grad()
def test_patching_every_position_of_a_layer_gives_the_source_downstream(model):
    a, b = ids(model, A), ids(model, B)
    assert a.shape == b.shape
    with tr.trace(model, capture=["llm.layers.1.hidden", "llm.final"]) as src:
        la = model.lvlm.llm(input_ids=a).logits
    lb = model.lvlm.llm(input_ids=b).logits
    assert (la - lb).abs().max() > 1e-2                      # the two prompts really differ
    with tr.trace(model, capture=["llm.final"], edits={"llm.layers.1.hidden": tr.patch_from(src)}) as t:
        lp = model.lvlm.llm(input_ids=b).logits
    torch.testing.assert_close(lp, la, atol=1e-5, rtol=0)
    torch.testing.assert_close(t["llm.final"], src["llm.final"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_patching_a_layer_across_the_decoding_loop(model):
    """The source generates; the target, patched at every position of layer 1 from the source's whole
    run (prompt and generated), follows it token for token with the same downstream states."""
    a, b = ids(model, A), ids(model, B)
    for fast in (True, False):
        with tr.trace(model, capture=["llm.layers.1.hidden", "llm.final"]) as src:
            ra = gen(model, a, n=20, fast_forced_block=fast)
        rb = gen(model, b, n=20, fast_forced_block=fast)
        with tr.trace(model, capture=["llm.final"], edits={"llm.layers.1.hidden": tr.patch_from(src)}) as t:
            rp = gen(model, b, n=20, fast_forced_block=fast)
        assert torch.equal(rp.sequences[:, a.shape[1]:], ra.sequences[:, a.shape[1]:])
        assert len(t.pieces("llm.final")[0]) > 2                      # several passes of the KV-cache loop
        torch.testing.assert_close(t["llm.final"], src["llm.final"], atol=1e-5, rtol=0)
        assert not torch.allclose(rb.hidden[:, :1], ra.hidden[:, :1], atol=1e-3)


@torch.no_grad()
def test_positions_are_absolute_in_the_decoding_loop_and_capture_sees_the_edit(model):
    x = ids(model, A)
    T0 = x.shape[1]
    with tr.trace(model, capture=["llm.layers.0.hidden"]) as ref:
        gen(model, x, n=6, fast_forced_block=False)
    v = torch.randn(model.config.llm.hidden_size)
    for p in (T0 - 2, T0 + 3):                               # one in the prompt, one decoded step by step
        with tr.trace(model, capture=["llm.layers.0.hidden"], edits={"llm.layers.0.hidden": tr.add(v, positions=[p])}) as t:
            gen(model, x, n=6, fast_forced_block=False)
        h, h0 = t["llm.layers.0.hidden"], ref["llm.layers.0.hidden"]
        assert torch.equal(h[:, :p], h0[:, :p])
        torch.testing.assert_close(h[0, p] - h0[0, p], v, atol=1e-5, rtol=0)
    with tr.trace(model, capture=["llm.layers.1.hidden"], edits={"llm.layers.1.hidden": tr.zero(positions=[1, 2])}) as t:
        model.lvlm.llm(input_ids=x)
    h = t["llm.layers.1.hidden"][0]
    assert h[1:3].abs().max() == 0 and h[0].abs().max() > 0 and h[3:].abs().min(dim=-1).values.gt(0).all()


@torch.no_grad()
def test_edits_reach_inside_the_forced_block_and_the_output_resampler(model):
    plain = model.generate_image("a red circle", num_inference_steps=1, seed=0)
    with tr.trace(model, capture=["output_resampler.out"], edits={"output_resampler.out": tr.zero()}) as t:
        z = model.generate_image("a red circle", num_inference_steps=1, seed=0)
    assert t["output_resampler.out"].abs().max() == 0
    assert not torch.equal(torch.as_tensor(list(z.image.getdata())), torch.as_tensor(list(plain.image.getdata())))
    n = plain.output.sequences.shape[1]
    inside = n - 10                                           # a forced image token's position
    with tr.trace(model, capture=[], edits={"llm.layers.3.hidden": tr.scale(3.0, positions=[inside])}):
        s = model.generate_image("a red circle", num_inference_steps=1, seed=0)
    assert torch.equal(s.output.sequences, plain.output.sequences)       # the forced ids stay
    assert not torch.equal(s.features, plain.features)                     # but what the block says changed


@torch.no_grad()
def test_knockout_of_every_earlier_token_equals_the_last_token_alone(model):
    x = ids(model, A)
    T0 = x.shape[1]
    llm = model.lvlm.llm
    with tr.trace(model, capture=[], edits={"llm.layers.*.attn": tr.knockout(range(T0 - 1))}):
        ko = llm(input_ids=x).logits[:, -1]
    alone = llm(input_ids=x[:, -1:], position_ids=torch.tensor([[T0 - 1]])).logits[:, -1]
    full = llm(input_ids=x).logits[:, -1]
    torch.testing.assert_close(ko, alone, atol=1e-5, rtol=0)
    assert (ko - full).abs().max() > 1e-3
    # in the captured pattern (eager while captured) the blocked keys get no weight, the others renormalise
    with tr.trace(model, capture=["llm.layers.2.attn"], edits={"llm.layers.*.attn": tr.knockout([1, 2])}) as t:
        llm(input_ids=x)
    w = t["llm.layers.2.attn"][0, :, -1]                      # [heads, keys] of the last position
    assert w[:, [1, 2]].abs().max() == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]), atol=1e-5, rtol=0)
    assert attn_impl(model) != "eager"


@torch.no_grad()
def test_llm_attention_capture_shapes_rows_and_restores_the_implementation(model):
    x = ids(model, A)
    before = attn_impl(model)
    ref = gen(model, x, n=8)
    with tr.trace(model, capture=["llm.layers.*.attn"]) as t:
        out = gen(model, x, n=8)
        assert attn_impl(model) == "eager"
    assert attn_impl(model) == before
    assert torch.equal(out.sequences, ref.sequences)
    P = out.sequences.shape[1]
    H = model.config.llm.num_attention_heads
    a = t["llm.layers.0.attn"]
    assert a.shape == (1, H, P, P)
    assert tr.estimate_shapes(model, capture=["llm.layers.0.attn"], seq_len=P)["llm.layers.0.attn"][0] == (1, H, P, P)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, H, P), atol=1e-5, rtol=0)
    assert torch.triu(a[0, 0], diagonal=1).abs().max() == 0          # causal
    with tr.trace(model, capture=["llm.layers.*"]) as t2:               # not asked for: not captured
        model.lvlm.llm(input_ids=x)
    assert not any(k.endswith(".attn") for k in t2.keys())


def test_unknown_or_wrong_edits_are_refused(model):
    with pytest.raises(ValueError, match="did you mean llm.layers.*.hidden"):
        tr.trace(model, edits={"llm.layer.2.hidden": tr.zero()})
    with pytest.raises(ValueError, match="cannot be edited"):
        tr.trace(model, edits={"llm.token_ids": tr.zero()})
    with pytest.raises(TypeError, match="knockout"):
        tr.trace(model, edits={"llm.layers.1.attn": lambda v, c: v})
    with pytest.raises(TypeError, match="must be a function"):
        tr.trace(model, edits={"llm.final": 3})


@torch.no_grad()
def test_nothing_stays_installed_after_an_error_inside_an_edited_run(model):
    base, impl = hooks(model), attn_impl(model)
    x = ids(model, A)

    def boom(v, ctx):
        if ctx.past > 0:
            raise RuntimeError("boom in the loop")
        return v
    with pytest.raises(RuntimeError, match="boom in the loop"):
        with tr.trace(model, capture=["llm.layers.*.attn", "llm.final"],
                      edits={"llm.layers.2.hidden": boom, "llm.layers.*.attn": tr.knockout([1])}):
            assert attn_impl(model) == "eager" and hooks(model) != base
            gen(model, x, n=5, fast_forced_block=False)
    assert hooks(model) == base and attn_impl(model) == impl
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        with tr.trace(model, edits={"llm.final": lambda v, c: v[:, :1]}):
            model.lvlm.llm(input_ids=x)
    assert hooks(model) == base
