import pytest
import torch
import torch.nn.functional as F

from seedx_lab import tokens as T
from seedx_lab.lvlm import ContinuousLVLM, LLMConfig, build_lvlm, pool_targets
from seedx_lab.sequences import block_masks, make_labels

VIT_DIM = 16
N = 64


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer(["a", "red", "blue", "circle", "square", ".", "describe", "it", "here", "is", ":"])


@pytest.fixture(scope="module")
def ids(tok):
    return T.ImageTokenIds.from_tokenizer(tok)


@pytest.fixture(scope="module")
def model(tok, ids):
    torch.manual_seed(0)
    cfg = LLMConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=512)
    m = build_lvlm(cfg, VIT_DIM, ids, resampler_heads=2).eval()
    return m


def enc(tok, text):
    return torch.tensor([tok.encode(text, add_special_tokens=False)])


def test_pool_targets_1d_and_2d_against_manual():
    x = torch.randn(2, 256, 3)
    p1 = pool_targets(x, "1d")
    assert p1.shape == (2, 64, 3)
    assert torch.allclose(p1[:, 5], x[:, 20:24].mean(1))            # run of 4 consecutive tokens
    p2 = pool_targets(x, "2d")
    g = x.view(2, 16, 16, 3)
    assert torch.allclose(p2[:, 9], g[:, 2:4, 2:4].mean((1, 2)))     # output (1, 1) = cells rows 2-3, cols 2-3
    assert not torch.allclose(p1, p2)
    with pytest.raises(ValueError, match="'1d' or '2d'"):
        pool_targets(x, "3d")


def test_embeddings_land_exactly_at_image_token_positions(model, tok, ids):
    text = "describe it " + T.comprehension_prompt(2) + " a red circle"
    input_ids = enc(tok, text)
    cmp, gen = block_masks(input_ids, ids, [[False, False]])
    assert int(cmp.sum()) == 128 and not gen.any()
    feats = torch.randn(2, 256, VIT_DIM)
    pos = torch.tensor([[0.25, 0.5], [0.5, 0.5]])
    got = model.embed(input_ids, feats, cmp, pos)
    # manual: token embeddings, then scatter resampled features + position term into the masked slots
    want = model.llm.get_input_embeddings()(input_ids).clone()
    img = model.input_resampler(feats)
    p = torch.cat([pos, 1 - pos], -1) / 2
    img = img + (p @ model.patch_pos_embed)[:, None, :]
    where = cmp[0].nonzero().flatten()
    want[0, where] = img.reshape(-1, img.shape[-1])
    assert torch.allclose(got, want, atol=1e-6)
    # outside the image tokens nothing changed
    assert torch.equal(got[0, ~cmp[0]], model.llm.get_input_embeddings()(input_ids)[0, ~cmp[0]])
    with pytest.raises(ValueError, match="marks 128 positions but 1 views"):
        model.embed(input_ids, feats[:1], cmp, pos[:1])


def test_make_labels_only_boi_of_generated_blocks(tok, ids):
    text = "a red circle" + T.image_block() + " describe it" + T.generation_prompt(" here") + \
        "".join(T.IMG_TOKEN.format(i) for i in range(64)) + T.EOI_TOKEN + " ."
    input_ids = enc(tok, text)
    labels = make_labels(input_ids, ids, [[False, True]])
    blocks = T.find_image_blocks(input_ids[0], ids)
    b0, b1 = blocks
    assert (labels[0, b0.start:b0.end] == -100).all()                  # comprehension block: nothing
    assert labels[0, b1.start] == ids.boi                              # generated block: only <img>
    assert (labels[0, b1.start + 1:b1.end] == -100).all()
    text_pos = [i for i in range(input_ids.shape[1]) if not any(b.start <= i < b.end for b in blocks)]
    assert torch.equal(labels[0, text_pos], input_ids[0, text_pos])
    with pytest.raises(ValueError, match="2 image blocks but 1 gen flags"):
        make_labels(input_ids, ids, [[True]])


def _gen_batch(tok, ids):
    text = "a red circle" + T.image_block() + " ."
    input_ids = enc(tok, text)
    labels = make_labels(input_ids, ids, [[True]])
    cmp, gen = block_masks(input_ids, ids, [[True]])
    return input_ids, labels, cmp, gen


@pytest.mark.parametrize("mse", [True, False])
def test_losses_against_independent_computation(model, tok, ids, mse):
    input_ids, labels, cmp, gen = _gen_batch(tok, ids)
    target = torch.randn(1, 256, VIT_DIM)
    model.mse = mse
    try:
        out = model(input_ids, labels=labels, target_features=target, ids_gen_mask=gen)
    finally:
        model.mse = True
    # independent: plain LLM forward on token embeddings (no comprehension images here)
    ref = model.llm(input_ids=input_ids, output_hidden_states=True)
    lm = F.cross_entropy(ref.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    h = ref.hidden_states[-1][0, gen[0]]                                   # [64, D]
    rec = model.output_resampler(h[None])
    tgt = target.view(1, 64, 4, VIT_DIM).mean(2)                           # runs of 4 tokens
    rl = ((rec - tgt) ** 2).mean() if mse else (1 - F.cosine_similarity(rec, tgt, dim=-1)).mean()
    assert torch.allclose(out["lm_loss"], lm, atol=1e-5)
    assert torch.allclose(out["rec_loss"], rl, atol=1e-5)
    assert torch.allclose(out["loss"], model.lm_loss_scale * lm + model.rec_loss_scale * rl, atol=1e-5)
    assert out["rec"].shape == (1, 64, VIT_DIM)                             # 64 outputs, not 256


def test_gradients_reach_both_resamplers_and_patch_pos(model, tok, ids):
    text = T.comprehension_prompt(2) + " a red circle" + T.image_block() + " ."
    input_ids = enc(tok, text)
    flags = [[False, False, True]]
    cmp, gen = block_masks(input_ids, ids, flags)
    out = model(input_ids, labels=make_labels(input_ids, ids, flags), image_features=torch.randn(2, 256, VIT_DIM),
                ids_cmp_mask=cmp, patch_positions=torch.tensor([[0.25, .5], [.5, .5]]),
                target_features=torch.randn(1, 256, VIT_DIM), ids_gen_mask=gen)
    model.zero_grad()
    out["loss"].backward()
    for name in ["input_resampler.query", "output_resampler.query", "patch_pos_embed"]:
        g = dict(model.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    model.zero_grad()


def test_generate_forces_a_block_and_returns_64_hidden_states(model, tok, ids):
    prompt = enc(tok, T.generation_prompt("a red circle"))
    out = model.generate(prompt, max_new_tokens=70)
    new = out.new_tokens[0].tolist()
    assert new[:65] == list(ids.img) + [ids.eoi]
    img, = out.images[0]
    assert img.hidden.shape == (64, 32) and img.features.shape == (64, VIT_DIM)
    # the hidden states are those of a plain forward over the whole sequence at the image-token positions
    ref = model.llm(input_ids=out.sequences, output_hidden_states=True).hidden_states[-1][0]
    assert torch.allclose(img.hidden, ref[img.block.token_positions.start: img.block.token_positions.stop], atol=1e-4)
    assert torch.allclose(img.features, model.output_resampler(img.hidden[None])[0], atol=1e-5)


def test_fast_path_equals_step_by_step(model, tok, ids):
    prompt = enc(tok, T.generation_prompt("a blue square"))
    fast = model.generate(prompt, max_new_tokens=80, fast_forced_block=True)
    slow = model.generate(prompt, max_new_tokens=80, fast_forced_block=False)
    assert torch.equal(fast.sequences, slow.sequences)                     # the text after the block too
    assert (fast.images[0][0].hidden - slow.images[0][0].hidden).abs().max() <= 1e-4


def test_batched_rows_enter_blocks_at_different_steps(model, tok, ids):
    # left-padded batch: one row ends in <img>, the other is plain text
    a = tok.encode(T.generation_prompt("a red circle"), add_special_tokens=False)
    b = tok.encode("here is a blue square .", add_special_tokens=False)
    n = max(len(a), len(b))
    input_ids = torch.tensor([[0] * (n - len(a)) + a, [0] * (n - len(b)) + b])
    mask = (input_ids != 0).long()
    fast = model.generate(input_ids, attention_mask=mask, max_new_tokens=70, fast_forced_block=True)
    slow = model.generate(input_ids, attention_mask=mask, max_new_tokens=70, fast_forced_block=False)
    assert torch.equal(fast.sequences, slow.sequences)
    assert len(fast.images[0]) == 1
    assert (fast.images[0][0].hidden - slow.images[0][0].hidden).abs().max() <= 1e-4
    # each row equals its own unbatched run
    solo = model.generate(torch.tensor([a]), max_new_tokens=70)
    assert torch.equal(fast.new_tokens[0], solo.new_tokens[0])


def test_block_cut_by_max_new_tokens_is_reported_not_returned(model, tok):
    prompt = enc(tok, T.generation_prompt("a red circle"))
    out = model.generate(prompt, max_new_tokens=10)
    assert out.images[0] == [] and len(out.incomplete_blocks[0]) == 1


def test_sampling_is_real_and_seeded(model, tok):
    prompt = enc(tok, "a red")
    g = lambda s: torch.Generator().manual_seed(s)
    a = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=1.5, generator=g(1), processor_mode="strict")
    b = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=1.5, generator=g(1), processor_mode="strict")
    c = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=1.5, generator=g(2), processor_mode="strict")
    greedy = model.generate(prompt, max_new_tokens=12)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences) or not torch.equal(a.sequences, greedy.sequences)


def test_sampling_warpers_keep_the_smallest_nucleus_at_the_temperature():
    from seedx_lab.lvlm import sampling_warpers

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3                                  # continuous: no ties
    out = sampling_warpers(0.7, 0.5)(torch.zeros(3, 1, dtype=torch.long), logits.clone())
    for row, kept in zip(logits, torch.isfinite(out)):
        p = (row / 0.7).softmax(-1)
        order = p.argsort(descending=True).tolist()
        want, mass = set(), 0.0
        for i in order:                                              # add tokens until the mass reaches 0.5
            want.add(i)
            mass += float(p[i])
            if mass >= 0.5:
                break
        assert set(kept.nonzero().flatten().tolist()) == want
    kept_scores = out[torch.isfinite(out)]
    torch.testing.assert_close(kept_scores, (logits / 0.7)[torch.isfinite(out)])
    assert len(sampling_warpers(1.0, 1.0)) == 0                       # plain softmax sampling
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampling_warpers(0.0, 0.5)
    with pytest.raises(ValueError, match="top_p must be"):
        sampling_warpers(1.0, 1.5)


def test_published_width_builds_on_meta(ids):
    from seedx_lab.resampler import Resampler, ResamplerConfig
    cfg = LLMConfig.published()
    with torch.device("meta"):
        m = build_lvlm(cfg, 4096, ids, resampler_heads=32, device="meta")
    n_llm = sum(p.numel() for p in m.llm.parameters())
    d, f, L, V = 5120, 13824, 40, 32330
    expect = 2 * V * d + L * (4 * d * d + 3 * d * f + 2 * d) + d
    assert n_llm == expect
    assert m.patch_pos_embed.shape == (4, 5120) and m.patch_pos_embed.device.type == "meta"
    assert m.input_resampler.config.embed_dim == 5120 and m.output_resampler.config.embed_dim == 4096
