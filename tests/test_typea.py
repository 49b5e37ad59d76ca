"""Type A (chameleon-tiny): the codebook block processor, the VQ tokenizer, the model, training, evaluation."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedx_lab.typea.processor import CodebookBlockProcessor

# --------------------------------------------------------------------------- processor: property tests


@st.composite
def vocab_layout(draw):
    """A vocabulary of V tokens with distinct <img>, </img> and 1..12 code ids at random places; N codes per image."""
    V = draw(st.integers(6, 40))
    perm = draw(st.permutations(list(range(V))))
    n_codes_vocab = draw(st.integers(1, min(12, V - 3)))
    boi, eoi, codes, text = perm[0], perm[1], perm[2: 2 + n_codes_vocab], perm[2 + n_codes_vocab:]
    N = draw(st.integers(1, 6))
    return V, boi, eoi, codes, text or [perm[-1]], N


@st.composite
def prefix_for(draw, layout):
    """Text, complete blocks, and possibly a block cut after k <= N codes (the prompt ends mid-block)."""
    V, boi, eoi, codes, text, N = layout
    ids = [draw(st.sampled_from(text))]
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            ids += [boi] + [draw(st.sampled_from(codes)) for _ in range(N)] + [eoi]
        ids += [draw(st.sampled_from(text)) for _ in range(draw(st.integers(1, 3)))]
    open_k = draw(st.one_of(st.none(), st.integers(0, N)))
    if open_k is not None:
        ids += [boi] + [draw(st.sampled_from(codes)) for _ in range(open_k)]
    return ids, open_k


def _decode(proc, prefix, V, steps, seed, sample, boost):
    """Decode ``steps`` tokens with random logits (some tokens boosted by ``boost``) through ``proc``."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.tensor([prefix])
    for _ in range(steps):
        logits = torch.randn(1, V, generator=g) * 3
        logits[0, torch.randint(0, V, (3,), generator=g)] += boost
        scores = proc(seq, logits)
        if sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=g)[:, 0]
        else:
            nxt = scores.argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return seq[0].tolist()


def _check_blocks(seq, n_prefix, boi, eoi, codes, N, open_k):
    """Walk the whole sequence; every block that the decoder touched holds exactly N codes then </img>
    (or is still open with <= N codes at the end), and a new token outside a block is never a code or </img>."""
    codes = set(codes)
    i = 0
    while i < len(seq):
        if seq[i] != boi:
            if i >= n_prefix:
                assert seq[i] not in codes, f"code token at text position {i}: {seq}"
                assert seq[i] != eoi, f"</img> outside a block at {i}: {seq}"
            i += 1
            continue
        j = i + 1
        while j < len(seq) and seq[j] in codes:
            j += 1
        body = j - i - 1
        if j < len(seq):
            assert seq[j] == eoi, f"block at {i} ends in {seq[j]} after {body} codes, not </img>: {seq}"
            assert body == N, f"block at {i} has {body} codes, expected {N}: {seq}"
            i = j + 1
        else:
            assert body <= N, f"open block at {i} already has {body} > {N} codes: {seq}"
            i = j


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sample=st.booleans(), seed=st.integers(0, 2 ** 20), boost=st.sampled_from([0.0, 50.0, 1e6]))
def test_processor_blocks_have_exactly_n_codes_then_eoi(data, sample, seed, boost):
    layout = data.draw(vocab_layout())
    V, boi, eoi, codes, text, N = layout
    prefix, open_k = data.draw(prefix_for(layout))
    proc = CodebookBlockProcessor(boi, eoi, codes, N, V)
    steps = data.draw(st.integers(1, 3 * (N + 2)))
    seq = _decode(proc, prefix, V, steps, seed, sample, boost)
    _check_blocks(seq, len(prefix), boi, eoi, codes, N, open_k)
    if open_k is not None:
        # a prompt cut after k codes continues with N - k codes and then </img>
        rest = seq[len(prefix):]
        want = N - open_k
        assert all(t in set(codes) for t in rest[:min(want, len(rest))])
        if len(rest) > want:
            assert rest[want] == eoi


@settings(max_examples=30, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2 ** 20))
def test_processor_batch_equals_rows(data, seed):
    """One call on a batch of rows in different states equals one call per row."""
    layout = data.draw(vocab_layout())
    V, boi, eoi, codes, text, N = layout
    rows = [data.draw(prefix_for(layout))[0] for _ in range(3)]
    L = max(map(len, rows))
    rows = [[text[0]] * (L - len(r)) + r for r in rows]          # left-pad with a text token
    proc = CodebookBlockProcessor(boi, eoi, codes, N, V)
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(seed))
    batch = proc(torch.tensor(rows), logits)
    for b in range(3):
        assert torch.equal(batch[b], proc(torch.tensor([rows[b]]), logits[b:b + 1])[0])


def test_processor_bans_are_minus_inf_and_forces_eoi():
    V, boi, eoi, codes, N = 10, 1, 2, [5, 6, 7], 2
    proc = CodebookBlockProcessor(boi, eoi, codes, N, V)
    logits = torch.zeros(1, V)
    logits[0, 6] = 1e9                           # a code the model loves, outside a block
    out = proc(torch.tensor([[0, 3]]), logits)
    assert torch.isinf(out[0, codes]).all() and out[0, eoi] == float("-inf")
    assert out[0, boi] == 0 and out[0, 3] == 0   # text and <img> untouched
    inside = proc(torch.tensor([[0, boi, 5]]), torch.zeros(1, V))
    assert torch.isfinite(inside[0, codes]).all()
    assert torch.isinf(inside[0, [i for i in range(V) if i not in codes]]).all()
    closing = proc(torch.tensor([[0, boi, 5, 7]]), torch.full((1, V), -1e4))
    assert closing[0].argmax() == eoi and torch.isinf(closing[0, [i for i in range(V) if i != eoi]]).all()


def test_processor_banned_ids_never_win():
    proc = CodebookBlockProcessor(1, 2, [5, 6], 2, 10, banned_ids=[3, 4])
    logits = torch.zeros(3, 10)
    logits[:, 3] = 1e9
    out = proc(torch.tensor([[0, 0, 0], [0, 1, 5], [1, 5, 6]]), logits)   # outside, inside, closing
    assert torch.isinf(out[:, [3, 4]]).all()
    assert out[0].argmax() not in (3, 4, 5, 6, 2) and out[1].argmax() in (5, 6) and out[2].argmax() == 2


def test_processor_budget_bans_boi_only_when_block_cannot_finish():
    V, boi, eoi, codes, N = 10, 1, 2, [5, 6, 7], 3
    proc = CodebookBlockProcessor(boi, eoi, codes, N, V, max_length=8)
    # length 3: 3 + 5 = 8 <= 8, a block fits; length 4 does not
    assert proc(torch.tensor([[0, 3, 4]]), torch.zeros(1, V))[0, boi] == 0
    assert proc(torch.tensor([[0, 3, 4, 3]]), torch.zeros(1, V))[0, boi] == float("-inf")


@pytest.mark.parametrize("kw, msg", [
    (dict(boi=1, eoi=1, code_ids=[3], num_codes=2, vocab_size=5), "different"),
    (dict(boi=1, eoi=2, code_ids=[9], num_codes=2, vocab_size=5), "vocab_size=5"),
    (dict(boi=1, eoi=2, code_ids=[3], num_codes=0, vocab_size=5), "num_codes"),
    (dict(boi=1, eoi=2, code_ids=[], num_codes=1, vocab_size=5), "code_ids"),
    (dict(boi=1, eoi=2, code_ids=[3], num_codes=1, vocab_size=5, banned_ids=[3]), "banned_ids"),
])
def test_processor_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        CodebookBlockProcessor(**kw)


def test_processor_rejects_wrong_width():
    proc = CodebookBlockProcessor(1, 2, [3], 1, 5)
    with pytest.raises(ValueError, match="vocab_size=5"):
        proc(torch.tensor([[0]]), torch.zeros(1, 6))


# --------------------------------------------------------------------------- VQ tokenizer

from seedx_lab.typea.vq import VQConfig, VQTokenizer, images_to_unit  # noqa: E402


@pytest.fixture(scope="module")
def world_images():
    from seedx_lab.shapeworld import world as W

    return images_to_unit([W.caption_image_sample(k).image for k in range(4)])


@pytest.mark.parametrize("grid", [4, 8])
def test_vq_shapes_and_code_range(grid, world_images):
    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig.for_grid(grid, codebook_size=32))
    codes = vq.encode(world_images[:3])
    assert codes.shape == (3, grid, grid) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    out = vq.decode(codes)
    assert out.shape == (3, 3, 64, 64) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_vq_round_trip_equals_vqmodel_forward_after_training(world_images):
    """decode(encode(x)) (codes as integers, looked up again) equals VQModel's own forward, which quantises
    the latents in one go — after a few optimiser steps, so the codebook is no longer its initial one."""
    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig.for_grid(4, codebook_size=16))
    opt = torch.optim.Adam(vq.parameters(), lr=1e-3)
    for _ in range(2):
        loss, rec, commit = vq.loss(world_images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and rec > 0 and commit >= 0
    vq.eval()
    with torch.no_grad():
        ours = vq.decode(vq.encode(world_images))
        ref = ((vq.vq(world_images * 2 - 1).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_vq_loss_weights_object_pixels():
    """With foreground_weight > 1 an error on an object pixel costs more than the same error on background."""
    from seedx_lab.training.detok_losses import reconstruction_error

    img = -torch.ones(1, 3, 8, 8)
    img[..., 3:5, 3:5] = 1.0                                  # an object on a dark background
    on_obj, on_bg = img.clone(), img.clone()
    on_obj[..., 3, 3] -= 0.5
    on_bg[..., 0, 0] += 0.5
    assert reconstruction_error(on_obj, img, 5.0) > reconstruction_error(on_bg, img, 5.0)
    assert torch.isclose(reconstruction_error(on_obj, img), reconstruction_error(on_bg, img))


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(2, 3, 32, 32), r"\[B, 3, 64, 64\]"),
    (torch.zeros(3, 64, 64), r"\[B, 3, 64, 64\]"),
])
def test_vq_rejects_bad_images(bad, msg):
    with pytest.raises(ValueError, match=msg):
        VQTokenizer(VQConfig.for_grid(4, codebook_size=8)).encode(bad)


def test_vq_rejects_bad_codes():
    vq = VQTokenizer(VQConfig.for_grid(4, codebook_size=8))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.decode(torch.full((1, 4, 4), 8))
    with pytest.raises(ValueError, match=r"\[B, 4, 4\]"):
        vq.decode(torch.zeros(1, 8, 8, dtype=torch.long))


@pytest.mark.parametrize("grid", [3, 128, 0])
def test_vq_config_rejects_bad_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        VQConfig.for_grid(grid)


# --------------------------------------------------------------------------- ChameleonTiny

from seedx_lab.typea.model import ChameleonConfig, ChameleonTiny, build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model():
    tok = build_tokenizer(32)
    torch.manual_seed(0)
    return ChameleonTiny(ChameleonConfig.tiny(len(tok), grid=4, codebook_size=32), tok).eval()


@pytest.mark.parametrize("sample", [False, True])
def test_generate_image_writes_exactly_n_codes_even_when_the_llm_wants_text(tiny_model, sample):
    """The LLM is rigged to prefer </img> and a text word at every step; the block still holds N codes."""
    m = tiny_model
    head = m.llm.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            word = m.tokenizer.convert_tokens_to_ids("red")
            head[m.token_ids.eoi] = 5 * saved.abs().max()
            head[word] = 5 * saved.abs().max()
        r = m.generate_image("a red circle on the left .", sample=sample, seed=3)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    prompt_len = len(m.encode_ids(r.prompt))
    new = r.ids[prompt_len:].tolist()
    assert r.ids[prompt_len - 1] == m.token_ids.boi
    assert len(new) == m.num_codes + 1 and new[-1] == m.token_ids.eoi
    assert all(t in set(m.token_ids.img) for t in new[:-1])
    assert r.codes.shape == (4, 4) and r.image.size == (64, 64)
    assert torch.equal(m.codes_to_ids(r.codes[None])[0], torch.tensor(new[:-1]))


def test_sampled_images_vary_with_seed_greedy_does_not(tiny_model):
    m = tiny_model
    a, b = (m.generate_image("a blue star .", sample=True, seed=s).codes for s in (1, 2))
    g1, g2 = (m.generate_image("a blue star .", sample=False, seed=s).codes for s in (1, 2))
    assert torch.equal(g1, g2)
    assert not torch.equal(a, b)           # 16 codes from a near-uniform untrained model: a tie is ~impossible


def test_codes_ids_round_trip_and_errors(tiny_model):
    m = tiny_model
    codes = torch.randint(0, 32, (2, 4, 4))
    assert torch.equal(m.ids_to_codes(m.codes_to_ids(codes)), codes)
    with pytest.raises(ValueError, match="not code tokens"):
        m.ids_to_codes(torch.full((1, 16), m.token_ids.boi))


def test_describe_reads_codes_of_the_same_image(tiny_model):
    """Comprehension feeds the image's own codes: the prompt's block is <img>, encode(image) as tokens, </img>."""
    from seedx_lab.shapeworld import world as W
    from seedx_lab.typea.sequences import comprehension_pieces, encode_pieces

    m = tiny_model
    img = W.comprehension_sample(3).image                 # any aspect: stretched to 64x64
    codes = m.image_codes(img)[0]
    ids, labels = encode_pieces(m, comprehension_pieces(codes, "describe the image .", "a red circle ."))
    i = ids.index(m.token_ids.boi)
    assert ids[i + 1: i + 17] == m.codes_to_ids(codes[None])[0].tolist() and ids[i + 17] == m.token_ids.eoi
    assert all(l == -100 for l in labels[: ids.index(m.tokenizer.convert_tokens_to_ids("[/INST]")) + 1])
    assert isinstance(m.describe(img, max_new_tokens=4), str)


def test_generated_blocks_are_labelled_read_blocks_are_not(tiny_model):
    from seedx_lab.typea.sequences import encode_pieces

    m = tiny_model
    codes = torch.arange(16).view(4, 4)
    ids, labels = encode_pieces(m, [("text", "draw a red circle .", True), ("gen", codes), ("cmp", codes)])
    blocks = [i for i, t in enumerate(ids) if t == m.token_ids.boi]
    gen, cmp = blocks
    assert labels[gen: gen + 18] == ids[gen: gen + 18]
    assert labels[cmp: cmp + 18] == [-100] * 18


def test_save_load_round_trip(tiny_model, tmp_path):
    import seedx_lab

    m = tiny_model
    m.save(tmp_path / "ct")
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["arch"] == "chameleon-tiny"
    assert not list((tmp_path / "ct").glob("*.tmp"))
    back = seedx_lab.load(tmp_path / "ct")                 # dispatches on the saved config
    assert isinstance(back, ChameleonTiny) and back.config == m.config
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    r1, r2 = m.generate_image("a green square at the top ."), back.generate_image("a green square at the top .")
    assert torch.equal(r1.codes, r2.codes)


def test_load_refuses_mismatched_weights(tiny_model, tmp_path):
    m = tiny_model
    m.save(tmp_path / "ct")
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    cfg["vq"]["codebook_size"] = 64
    (tmp_path / "ct" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        ChameleonTiny.load(tmp_path / "ct")


def test_generate_story_blocks_are_complete(tiny_model):
    m = tiny_model
    out = m.generate("let us draw a red circle on the left . here it is :", max_new_tokens=60, sample=True, seed=0)
    from seedx_lab.tokens import find_image_blocks

    for blk in find_image_blocks(out.new_ids, m.token_ids):
        assert blk.complete and blk.n_tokens == m.num_codes
    assert len(out.images) == len(out.codes) <= 4


def test_user_text_with_special_tokens_is_refused(tiny_model):
    with pytest.raises(ValueError, match="<img_00003>"):
        tiny_model.generate_image("a red <img_00003> circle")


# --------------------------------------------------------------------------- training and evaluation


def _tiny_cfg(tmp_path, **kw):
    from seedx_lab.training.typea import TypeAConfig

    base = dict(out=str(tmp_path / "model"), work=str(tmp_path / "work"), grid=4, codebook_size=16, vq_steps=2,
                vq_batch=2, cache_size=4, comprehension_pool=2, story_pool=2, llm_steps=4, llm_batch=2,
                comprehension_batch=2, ckpt_every=1, log_every=1, vq_restart_every=1)
    base.update(kw)
    return TypeAConfig(**base)


def test_type_a_threads_hold_for_the_run_only(monkeypatch, tmp_path):
    from seedx_lab.training import typea as TA
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    seen = []
    monkeypatch.setattr(TA.TypeATrainer, "_run", lambda self: seen.append(torch.get_num_threads()) or tmp_path)
    assert TA.TypeATrainer(_tiny_cfg(tmp_path, threads=want), progress=False).run() == tmp_path
    assert seen == [want] and torch.get_num_threads() == before


def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from seedx_lab.training import typea as TA

    TA.train_typea(_tiny_cfg(tmp_path / "a"), progress=False)
    whole = ChameleonTiny.load(tmp_path / "a" / "model").state_dict()

    calls = {"n": 0}
    real = TA.TypeATrainer.llm_examples

    def crash_at_step_2(self, kind, step, n):
        if step == 2 and calls["n"] == 0:
            calls["n"] = 1
            raise KeyboardInterrupt("simulated interruption")
        return real(self, kind, step, n)

    monkeypatch.setattr(TA.TypeATrainer, "llm_examples", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        TA.train_typea(_tiny_cfg(tmp_path / "b"), progress=False)
    st = torch.load(tmp_path / "b" / "work" / "state.pt", weights_only=True)
    assert st["done"] == ["vq"] and st["stage"] == "llm" and st["step"] == 2
    TA.train_typea(_tiny_cfg(tmp_path / "b"), progress=False)
    resumed = ChameleonTiny.load(tmp_path / "b" / "model").state_dict()
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    log = (tmp_path / "b" / "work" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("stage,step,loss") and any(r.startswith("llm,3,") for r in log)


def test_training_refuses_a_state_of_another_grid(tmp_path):
    from seedx_lab.training import typea as TA

    TA.TypeATrainer(_tiny_cfg(tmp_path), progress=False)._save_state(None, 0, None)
    with pytest.raises(ValueError, match="grid=4"):
        TA.TypeATrainer(_tiny_cfg(tmp_path, grid=8), progress=False)


def test_evaluate_scores_a_type_a_model_with_the_same_line(tiny_model):
    from seedx_lab.shapeworld import evaluate as E

    r = E.evaluate(tiny_model, n=1, progress=False)
    assert isinstance(r, E.EvalResult) and r.line().startswith("caption_acc=")
    pred, act = E.boi_predictions(tiny_model, __import__("seedx_lab").world.story_sample(0, "test").segments)
    assert len(pred) == len(act) and sum(act) >= 1          # a story has at least one picture
    c = E.tokenizer_ceiling(tiny_model, n=2)
    assert 0.0 <= c <= 1.0


def test_tokenizer_ceiling_refuses_a_seedx():
    from seedx_lab.shapeworld import evaluate as E

    with pytest.raises(ValueError, match="Type-A model .* got object"):
        E.tokenizer_ceiling(object(), n=1)


def test_cli_train_typea_defaults_per_grid():
    from seedx_lab.cli import _typea_config, build_parser

    q8 = _typea_config(build_parser().parse_args(["train-typea", "--grid", "8", "--quick"]))
    assert (q8.grid, q8.quick, q8.work, q8.out) == (8, True, "runs/typea-quick-8x8", "runs/typea-quick-8x8/model")
    full = _typea_config(build_parser().parse_args(["train-typea"]))
    assert (full.grid, full.quick, full.out) == (4, False, "data/chameleon-tiny")
    assert full.llm_steps > q8.llm_steps
    f8 = _typea_config(build_parser().parse_args(["train-typea", "--grid", "8", "--vq-steps", "7", "--llm-steps", "9",
                                                  "--vq-embed-dim", "8", "--vq-restart-every", "50"]))
    assert (f8.out, f8.vq_steps, f8.llm_steps, f8.vq_embed_dim, f8.vq_restart_every) == \
        ("data/chameleon-tiny-8x8", 7, 9, 8, 50)
    assert (full.vq_embed_dim, full.vq_restart_every) == (8, 50)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-typea", "--vq-steps", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-typea", "--grid", "5"])


# --------------------------------------------------------------------------- the shipped checkpoint

from seedx_lab.loading import DATA_DIR  # noqa: E402


SHIPPED_ARMS = [("chameleon-tiny", 4), ("chameleon-tiny-8x8", 8)]      # name, code grid side


@pytest.fixture(scope="module", params=SHIPPED_ARMS, ids=[n for n, _ in SHIPPED_ARMS])
def chameleon(request):
    import seedx_lab

    name, grid = request.param
    return name, grid, seedx_lab.load(name)


def test_shipped_chameleon_tiny_loads_and_fits_the_size_limit(chameleon):
    name, grid, model = chameleon
    d = DATA_DIR / name
    assert sum(f.stat().st_size for f in d.iterdir() if f.is_file()) <= 15 * 10 ** 6
    for f in ("config.json", "model.safetensors", "tokenizer.json", "train_log.csv", "train_config.json"):
        assert (d / f).is_file(), f
    assert json.loads((d / "train_config.json").read_text())["grid"] == grid
    assert isinstance(model, ChameleonTiny) and not model.training
    assert model.num_codes == grid * grid and model.config.vq.codebook_size == len(model.token_ids.img)
    r = model.generate_image("one big red square in the centre .")
    new = r.ids[len(model.encode_ids(r.prompt)):].tolist()
    assert len(new) == grid * grid + 1 and new[-1] == model.token_ids.eoi and r.image.size == (64, 64)
    assert set(new[:-1]) <= set(model.token_ids.img)


def test_shipped_tokenizer_round_trip_is_judged_right_on_most_held_out_images(chameleon):
    """image -> codes -> image on 20 held-out caption images: the pixel judge finds the caption's object
    (shape, colour, position) in the reconstruction of more than half of them."""
    from seedx_lab.shapeworld.evaluate import tokenizer_ceiling

    assert tokenizer_ceiling(chameleon[2], n=20, split="test") > 0.5


# --------------------------------------------------------------------------- side by side (seedx_lab.lab.compare)

def test_detokenizer_ceiling_draws_the_pooled_true_features(shipped, monkeypatch):
    """The de-tokenizer is fed pool_targets(ViT(true image)) [64, vit]; a drawing that returns the true
    picture when (and only when) it gets those features scores as the judge scores true pictures."""
    from seedx_lab import world as W
    from seedx_lab.images import normalize
    from seedx_lab.lvlm import pool_targets
    from seedx_lab.shapeworld import evaluate as E
    from seedx_lab.training.data import image_to_unit

    seen = []

    def fake_draw(feats, num_inference_steps=None, seed=0):
        sm = W.caption_image_sample(seed, "test")
        want = pool_targets(shipped.vit(normalize(image_to_unit(sm.image)[None])), "1d", 64)[0]
        seen.append(tuple(feats.shape))
        return sm.image if torch.allclose(feats, want, atol=1e-5) else sm.image.rotate(90)

    monkeypatch.setattr(shipped, "draw", fake_draw)
    truth = sum(__import__("seedx_lab").judge.score_image(W.caption_image_sample(s, "test").image,
                                                          W.caption_image_sample(s, "test").caption)["all"]
                for s in range(3)) / 3
    assert E.detokenizer_ceiling(shipped, n=3) == truth
    assert seen == [(64, shipped.config.vit.output_dim)] * 3
    with pytest.raises(ValueError, match="needs a SeedX"):
        E.detokenizer_ceiling(ChameleonTiny.__new__(ChameleonTiny), n=1)


def test_image_cost_counts_passes_tokens_and_cache(tiny_model):
    from seedx_lab.lab import compare as C

    cost = C.image_cost(tiny_model, "a red circle .")
    n_prompt = len(tiny_model.encode_ids("a red circle .<img>"))
    cfg = tiny_model.config.llm
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    per_position = cfg.num_hidden_layers * 2 * kv_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert (cost.tokens, cost.passes) == (16, 17)              # one pass per chosen code and one for </img>
    assert cost.cache_bytes == (n_prompt + 16) * per_position  # the </img> step's input is the 16th code


def test_story_layout_reads_blocks_and_trigger(tiny_model):
    from seedx_lab.lab import compare as C

    lay = C.story_layout(tiny_model, "let us draw a red star . here it is :", max_new_tokens=40, max_images=2)
    assert lay.pictures == lay.text.count("</img>") == len(lay.images) <= 2
    assert 0 <= lay.after_trigger <= lay.pictures and lay.text_after >= 0


def test_variety_type_a_samples_codes(tiny_model):
    from seedx_lab.lab import compare as C

    v = C.variety(tiny_model, "a blue star .", seeds=(1, 2, 3))
    assert v["distinct"] == 3 and v["mean_abs"] > 0 and len(v["images"]) == 3
    same = C.variety(tiny_model, "a blue star .", seeds=(5, 5))
    assert same["distinct"] == 1 and same["mean_abs"] == 0.0


def test_vq_restart_moves_only_dead_codes_onto_batch_latents():
    from seedx_lab.typea.vq import VQConfig, VQTokenizer

    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig.for_grid(4, codebook_size=8, vq_embed_dim=4))
    before = vq.vq.quantize.embedding.weight.detach().clone()
    latents = torch.randn(5, 4)
    assert vq.restart_codes(torch.tensor([1, 6]), latents, generator=torch.Generator().manual_seed(0)) == 2
    after = vq.vq.quantize.embedding.weight.detach()
    assert torch.equal(after[[0, 2, 3, 4, 5, 7]], before[[0, 2, 3, 4, 5, 7]])
    assert all(any(torch.equal(after[i], row) for row in latents) for i in (1, 6))
    total, rec, commit, codes, flat = vq.loss_and_codes(torch.rand(2, 3, 64, 64))
    assert codes.shape == (32,) and flat.shape == (32, 4) and int(codes.max()) < 8
    assert torch.allclose(total, rec + vq.config.commit_weight * commit)


def test_typea_config_restart_window_must_end_on_checkpoints():
    from seedx_lab.training.typea import TypeAConfig

    with pytest.raises(ValueError, match="vq_restart_every"):
        TypeAConfig(ckpt_every=200, vq_restart_every=30)
    assert TypeAConfig(ckpt_every=200, vq_restart_every=0).vq_restart_every == 0
