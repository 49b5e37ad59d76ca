"""seedx_lab.widgets: one view per stage; static PNG + fixed text/plain, and controls that change the state."""
import numpy as np
import pytest
import torch

import seedx_lab
from seedx_lab import anyres, probes, widgets as V
from seedx_lab import world as W
from seedx_lab.training import build_model

pytestmark = [pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def wide():
    return W.render(W.sample_scene(1, width=128, height=64))      # 128x64 -> grid 2x1 at base 64


@pytest.fixture(scope="module")
def image_trace(model):
    """One text-to-image run with the processor decisions, the ids and every diffusion step captured."""
    with seedx_lab.trace(model, capture=["processor.decisions", "llm.token_ids", "detok.step.*"]) as t:
        res = model.generate_image("a red circle", num_inference_steps=2)
    return t, res


@pytest.fixture(autouse=True)
def no_frontend(monkeypatch):
    monkeypatch.setattr(V, "FRONTEND", False)


def check_bundle(view, text):
    data = view._repr_mimebundle_()
    assert set(data) == {"text/plain", "image/png"}
    assert data["text/plain"] == text == repr(view)
    assert data["image/png"].startswith(PNG_MAGIC)
    assert "0x" not in text


def image_arrays(fig, axis):
    return [im.get_array() for im in fig.axes[axis].images]


# --------------------------------------------------------------------------- tiling

def test_tiling_viewer_bundle_and_choice(model, wide):
    v = V.tiling_viewer(wide, model)                      # base from the model: tile_size 64
    check_bundle(v, "TilingViewer(image=128x64, base=64, chosen=2x1, selected=2x1, candidates=8)")
    labels = [label for label, _ in v.controls["grid"].options]
    assert len(labels) == 8 and "SEED-X" in labels[[g for _, g in v.controls["grid"].options].index("2x1")]
    d = anyres.choose_resolution(wide.size, 64)
    assert v.decision.chosen == d.chosen and v.llava == "2x1" and v.aspect == "2x1"


def test_tiling_viewer_grid_lines_follow_the_dropdown():
    img = W.render(W.sample_scene(2, width=100, height=60))
    v = V.tiling_viewer(img, base=64)
    before = v.png()
    v.controls["grid"].value = "3x1"
    assert v.selected == "3x1" and "selected=3x1" in repr(v)
    assert v.png() != before
    fig = v.figure()
    xs = sorted(l.get_xdata()[0] for l in fig.axes[0].lines if l.get_gid() == "grid-x")
    ys = [l.get_ydata()[0] for l in fig.axes[0].lines if l.get_gid() == "grid-y"]
    np.testing.assert_allclose(xs, [100 / 3, 200 / 3])
    assert ys == []
    v.set(grid="2x2")
    fig = v.figure()
    xs = [l.get_xdata()[0] for l in fig.axes[0].lines if l.get_gid() == "grid-x"]
    ys = [l.get_ydata()[0] for l in fig.axes[0].lines if l.get_gid() == "grid-y"]
    assert xs == [50.0] and ys == [30.0]
    tx = [l.get_xdata()[0] for l in fig.axes[1].lines if l.get_gid() == "tile-x"]
    ty = [l.get_ydata()[0] for l in fig.axes[1].lines if l.get_gid() == "tile-y"]
    assert tx == [64.0] and ty == [64.0]


def test_tiling_viewer_published_base_on_a_photo_sized_image():
    img = W.render(W.sample_scene(3), size=(451, 300))
    v = V.tiling_viewer(img, base=448)
    d = anyres.choose_resolution((451, 300), 448)
    assert v.chosen == f"{d.grid[0]}x{d.grid[1]}" and v.selected == v.chosen
    assert any(v.chosen in line for line in v.why())


# --------------------------------------------------------------------------- attention

def test_attention_viewer_heat_map_is_the_traced_row(model, wide):
    with seedx_lab.trace(model, capture=["input_resampler.attn"]) as t:
        feats, pos, tiles = model.encode_image(wide)
        model.lvlm.image_embeddings(feats, pos)
    ref = t["input_resampler.attn"]                                      # [3, heads, 64, 256]
    _, direct = model.lvlm.input_resampler(feats, return_attn=True)
    torch.testing.assert_close(ref, direct)

    v = V.attention_viewer(model, wide)
    check_bundle(v, "AttentionViewer(which=input_resampler, views=3, queries=64, heads=4, keys=16x16, "
                    "view=global, query=0, head=mean)")
    assert [label for label, _ in v.controls["view"].options] == ["tile 0 (row 0, col 0)", "tile 1 (row 0, col 1)",
                                                                  "global view"]
    np.testing.assert_allclose(v.heatmap(), ref[2, :, 0].mean(0).reshape(16, 16).numpy(), rtol=1e-6)

    png0 = v.png()
    v.set(view=0, query=5, head=2)
    assert (v.view, v.query, v.head) == (0, 5, 2)
    assert repr(v).endswith("view=tile0, query=5, head=2)")
    np.testing.assert_array_equal(v.heatmap(), ref[0, 2, 5].reshape(16, 16).numpy())
    shown = image_arrays(v.figure(), 2)[0]
    np.testing.assert_array_equal(np.asarray(shown), ref[0, 2, 5].reshape(16, 16).numpy())
    assert v.png() != png0
    v.controls["query"].value = 6
    assert not np.allclose(v.heatmap(), ref[0, 2, 5].reshape(16, 16).numpy())
    np.testing.assert_array_equal(v.heatmap(), ref[0, 2, 6].reshape(16, 16).numpy())

    from_trace = V.attention_viewer(model, wide, trace=t)
    torch.testing.assert_close(from_trace.attn, v.attn)


def test_attention_viewer_vit_pool(model, wide):
    v = V.attention_viewer(model, wide, which="vit.attn_pool")
    assert v.n_queries == 256 and v.controls["query"].max == 255 and v.key_side == 16
    assert v.heatmap().sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="which must be"):
        V.attention_viewer(model, wide, which="nope")


# --------------------------------------------------------------------------- token timeline

def test_token_timeline_classes_a_generate_image_run(model, image_trace):
    t, res = image_trace
    v = V.token_timeline(model, trace=t)
    n = model.lvlm.num_img_tokens
    check_bundle(v, f"TokenTimeline(prompt_tokens=5, new_tokens={n + 1}, text=0, boi=0, image={n}, eoi=1, "
                    f"forced={n + 1}, step=0)")
    assert v.ids == res.output.sequences[0].tolist()
    assert v.classes == ["special", "text", "text", "text", "boi"] + ["image"] * n + ["eoi"]
    assert all(v.forced)
    d0 = v.decision(0)
    assert d0["state"] == "inside" and d0["forced_id"] == model.token_ids.img[0] and d0["chosen_id"] == d0["forced_id"]
    np.testing.assert_allclose(v.p_boi, [d["p_boi"] for d in t["processor.decisions"]])

    png0 = v.png()
    v.controls["step"].value = n
    d = v.decision()
    assert d["state"] == "closing" and d["forced_id"] == model.token_ids.eoi and d["kind"] == "eoi"
    assert repr(v).endswith(f"step={n})") and v.png() != png0
    assert "forced </img>" in v.describe_step()


def test_token_timeline_from_a_caption_matches_the_trace(model, image_trace):
    t, _ = image_trace
    v = V.token_timeline(model, caption="a red circle")
    w = V.token_timeline(model, trace=t)
    assert v.ids == w.ids and v.classes == w.classes
    np.testing.assert_allclose(v.p_boi, w.p_boi, rtol=1e-5)


def test_token_timeline_text_prompt_and_classify(model):
    v = V.token_timeline(model, "a red circle", max_new_tokens=4)
    assert v.prompt_length == 4 and v.n_new == 4 and v.controls["step"].max == 3
    tid = model.token_ids
    assert V.classify_tokens([model.tokenizer.bos_token_id, tid.boi, tid.img[3], tid.eoi, tid.bop, tid.eop],
                             model.tokenizer, tid) == ["special", "boi", "image", "eoi", "patch", "patch"]
    assert V.classify_tokens(model.encode_ids("a red circle", bos=False), model.tokenizer) == ["text"] * 3


# --------------------------------------------------------------------------- BOI explorer

def test_boi_explorer_matches_boi_trace_and_generates(model):
    prompt = "a red circle . here it is :"
    v = V.boi_explorer(model, prompt, max_new_tokens=5, num_inference_steps=1)
    ref = probes.boi_trace(model, prompt)
    np.testing.assert_allclose(v.p_boi, ref.p_final, rtol=1e-6)
    np.testing.assert_allclose(v.p_lens, ref.p_lens, rtol=1e-6)
    L = model.config.llm.num_hidden_layers
    check_bundle(v, f"BoiExplorer(tokens={len(ref.ids)}, layers={L}, mode=faithful, generated=none)")

    v.controls["prompt"].value = "a blue square"
    np.testing.assert_allclose(v.p_boi, probes.boi_trace(model, "a blue square").p_final, rtol=1e-6)
    assert repr(v).startswith("BoiExplorer(tokens=4,")

    v.controls["mode"].value = "strict"
    v.widget.children                                        # the widget exists; the button drives generate
    v.controls["generate"].click()
    expected = model.generate("a blue square", max_new_tokens=5, max_images=2, processor_mode="strict",
                              num_inference_steps=1)
    assert v.result is not None and v.result.text == expected.text
    assert repr(v) == (f"BoiExplorer(tokens=4, layers={L}, mode=strict, generated=5 tokens, "
                       f"{len(expected.images)} images (strict))")
    assert v._repr_mimebundle_()["image/png"].startswith(PNG_MAGIC)

    v.controls["prompt"].value = "   "                       # an empty prompt keeps the last good one
    assert v.prompt == "a blue square" and v.error


# --------------------------------------------------------------------------- both widgets on the Type-A arm

@pytest.fixture(scope="module")
def chameleon():
    return seedx_lab.load("chameleon-tiny")


STORY = W.story_sample(0, "test").segments[0]               # a held-out story opening, ends in its trigger


def typea_classes(m, ids):
    """Independent of the widgets: kinds from the tokenizer's own strings; a code is any id the model maps
    to a codebook entry (``id_to_code >= 0``), which is its code range ``<img_00000>..<img_{K-1}>``."""
    tok = m.tokenizer
    codes = {tok.convert_tokens_to_ids(f"<img_{k:05d}>") for k in range(m.config.vq.codebook_size)}
    assert codes == {i for i in range(m.config.llm.vocab_size) if int(m.id_to_code[i]) >= 0}
    named = {tok.convert_tokens_to_ids("<img>"): "boi", tok.convert_tokens_to_ids("</img>"): "eoi"}
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    return [named.get(i) or ("code" if i in codes else "special" if i in special else "text") for i in ids]


def p_boi_from_logits(m, ids):
    """P(<img> next) at every position of ``ids``, from one plain forward pass of the model's LLM."""
    with torch.no_grad():
        logits = m.llm(input_ids=torch.tensor([ids]), use_cache=False).logits.float()
    return logits.softmax(-1)[0, :, m.tokenizer.convert_tokens_to_ids("<img>")].numpy()


def test_token_timeline_on_typea_caption_codes_then_forced_eoi(chameleon):
    m = chameleon
    n = m.num_codes
    v = V.token_timeline(m, caption="a red circle")
    T0 = len(m.encode_ids("a red circle<img>"))
    check_bundle(v, f"TokenTimeline(prompt_tokens={T0}, new_tokens={n + 1}, text=0, boi=0, code={n}, eoi=1, "
                    f"forced=1, step=0)")
    assert v.ids == m.generate_image("a red circle").ids.tolist()       # the same greedy tokens as drawing
    assert v.classes == typea_classes(m, v.ids)
    assert v.new_classes == ["code"] * n + ["eoi"]
    np.testing.assert_allclose(v.p_boi, p_boi_from_logits(m, v.ids)[T0 - 1: -1], rtol=1e-4, atol=1e-7)
    assert [d["state"] for d in v.decisions] == ["inside"] * n + ["closing"]
    assert [d["block_index"] for d in v.decisions] == list(range(n + 1))
    assert [d["allowed"] for d in v.decisions] == [m.config.vq.codebook_size] * n + [1]
    assert v.forced == [False] * n + [True]                          # codes are chosen, </img> is forced

    png0 = v.png()
    assert "code 1 of 16" in v.describe_step() and "the model picks which" in v.describe_step()
    v.controls["step"].value = n
    d = v.decision()
    assert d["state"] == "closing" and d["forced_id"] == d["chosen_id"] == m.token_ids.eoi and d["kind"] == "eoi"
    assert "forced </img>" in v.describe_step() and repr(v).endswith(f"step={n})") and v.png() != png0


def test_token_timeline_on_typea_story_choices_follow_the_masks(chameleon):
    """Greedy: each chosen token is the argmax of the test's own logits under the state's mask."""
    m = chameleon
    v = V.token_timeline(m, STORY, max_new_tokens=30)
    assert v.classes == typea_classes(m, v.ids) and "boi" in v.new_classes
    with torch.no_grad():
        logits = m.llm(input_ids=torch.tensor([v.ids])).logits[0].float()
    codes = m.code_ids.tolist()
    outside_banned = codes + [m.token_ids.eoi, m.token_ids.bop, m.token_ids.eop]
    for k, d in enumerate(v.decisions):
        row = logits[v.prompt_length - 1 + k].clone()
        if d["state"] == "outside":
            row[outside_banned] = float("-inf")
        elif d["state"] == "inside":
            keep = torch.full_like(row, float("-inf"))
            keep[codes] = row[codes]
            row = keep
        else:
            assert v.ids[v.prompt_length + k] == m.token_ids.eoi
            continue
        assert int(row.argmax()) == v.ids[v.prompt_length + k], k
    k_boi = v.new_classes.index("boi")
    assert v.decisions[k_boi]["state"] == "outside" and v.decisions[k_boi + 1]["state"] == "inside"
    np.testing.assert_allclose(v.p_boi, p_boi_from_logits(m, v.ids)[v.prompt_length - 1: -1], rtol=1e-4, atol=1e-7)


def test_token_timeline_on_typea_sampling_and_refusals(chameleon):
    m = chameleon
    greedy = V.token_timeline(m, caption="a blue square")
    sampled = V.token_timeline(m, caption="a blue square", sample=True, seed=3)
    again = V.token_timeline(m, caption="a blue square", sample=True, seed=3)
    assert sampled.ids == again.ids and sampled.ids != greedy.ids     # seeded, and not the argmax path
    assert sampled.new_classes == ["code"] * m.num_codes + ["eoi"]
    with pytest.raises(ValueError, match="processor_mode is SeedX's"):
        V.token_timeline(m, "a red circle", processor_mode="strict")
    with pytest.raises(ValueError, match=r"unknown decoding option\(s\) \['do_sample'\]"):
        V.token_timeline(m, "a red circle", do_sample=True)
    with pytest.raises(ValueError, match="temperature must be"):
        V.token_timeline(m, "a red circle", sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="special-token text"):
        V.token_timeline(m, "a <img_00003> circle")
    with pytest.raises(TypeError, match="model must be a seedx_lab SeedX or a Type-A ChameleonTiny"):
        V.token_timeline(torch.nn.Linear(2, 2), "a red circle")
    with pytest.raises(TypeError, match="model must be a seedx_lab SeedX or a Type-A ChameleonTiny"):
        V.boi_explorer("chameleon-tiny", "a red circle")
    assert "processor" not in vars(m)                                 # the recording wrapper is gone again


def test_boi_explorer_on_typea_reads_the_llm_and_draws_with_the_vq_decoder(chameleon):
    m = chameleon
    v = V.boi_explorer(m, STORY, max_new_tokens=30, max_images=1, seed=1)
    ids = m.encode_ids(STORY)
    np.testing.assert_allclose(v.p_boi, p_boi_from_logits(m, ids), rtol=1e-4, atol=1e-7)
    L = m.config.llm.num_hidden_layers
    assert v.p_lens.shape == (L + 1, len(ids))
    np.testing.assert_allclose(v.p_lens[-1], v.p_boi, rtol=1e-4, atol=1e-7)   # the lens' last layer is the head
    check_bundle(v, f"BoiExplorer(tokens={len(ids)}, layers={L}, mode=greedy, generated=none)")
    assert v.controls["mode"].options == ("greedy", "sampled")

    png0 = v.png()
    v.controls["prompt"].value = "a blue square"
    np.testing.assert_allclose(v.p_boi, p_boi_from_logits(m, m.encode_ids("a blue square")), rtol=1e-4, atol=1e-7)
    assert v.png() != png0
    v.controls["prompt"].value = STORY

    v.controls["generate"].click()
    expected = m.generate(STORY, max_new_tokens=30, max_images=1)
    assert v.result.text == expected.text and len(v.result.images) == 1
    start = v.result.new_ids.tolist().index(m.token_ids.boi) + 1
    codes = m.ids_to_codes(v.result.new_ids[start: start + m.num_codes][None])
    from seedx_lab.typea.vq import unit_to_pil
    assert np.array_equal(np.asarray(v.result.images[0]), np.asarray(unit_to_pil(m.vq.decode(codes))[0]))
    greedy_png, greedy_ids = v.png(), v.result.new_ids.tolist()
    assert repr(v) == (f"BoiExplorer(tokens={len(ids)}, layers={L}, mode=greedy, "
                       f"generated={len(greedy_ids)} tokens, 1 images (greedy))")

    v.controls["mode"].value = "sampled"
    v.generate()
    assert v.result.new_ids.tolist() == m.generate(STORY, max_new_tokens=30, max_images=1, sample=True,
                                                   seed=1).new_ids.tolist()
    assert v.result.new_ids.tolist() != greedy_ids and v.png() != greedy_png
    assert repr(v).endswith("(sampled))")

    v.controls["prompt"].value = "a </img> square"             # refused as generate would: the last good one stays
    assert v.prompt == STORY and "special-token text" in v.error


def test_boi_trace_on_typea_lens_rows_and_generate(chameleon):
    m = chameleon
    b = probes.boi_trace(m, STORY, generate=True, max_new_tokens=20)
    ids = m.encode_ids(STORY)
    assert b.ids == ids + m.generate_ids(torch.tensor([ids]), 20)[0].tolist() and b.prompt_length == len(ids)
    np.testing.assert_allclose(b.p_final, p_boi_from_logits(m, b.ids), rtol=1e-4, atol=1e-7)
    with torch.no_grad():                                   # lens row 0: the embeddings through norm and head
        emb = m.llm.model.embed_tokens(torch.tensor([b.ids]))
        p0 = m.llm.lm_head(m.llm.model.norm(emb)).softmax(-1)[0, :, m.token_ids.boi].numpy()
    np.testing.assert_allclose(b.p_lens[0], p0, rtol=1e-4, atol=1e-7)
    assert b.layer_names == ["embed"] + [f"layer {i}" for i in range(m.config.llm.num_hidden_layers)]
    with pytest.raises(ValueError, match="processor_mode is SeedX's"):
        probes.boi_trace(m, STORY, processor_mode="strict")


# --------------------------------------------------------------------------- diffusion

@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_diffusion_scrubber_x0_is_the_schedulers_prediction(kind):
    """x0 recovered from (latents after the step, UNet output) = what Euler itself predicted."""
    import copy

    from diffusers import EulerDiscreteScheduler
    m = build_model(0).eval()
    cfg = dict(copy.deepcopy(m.config.detok.scheduler), prediction_type=kind, rescale_betas_zero_snr=True,
               timestep_spacing="trailing")
    m.detok.scheduler = EulerDiscreteScheduler(**cfg)
    seen = []
    real_step = m.detok.scheduler.step
    m.detok.scheduler.step = lambda *a, **k: seen.append(real_step(*a, **k)) or seen[-1]
    v = V.diffusion_scrubber(m, "a red circle", num_inference_steps=3)
    want = V._decode(m.detok, torch.cat([o.pred_original_sample for o in seen]).float())
    assert len(seen) == 3 and np.abs(v.x0.astype(int) - want.astype(int)).max() <= 1



def test_diffusion_scrubber_has_one_frame_per_step(model):
    v = V.diffusion_scrubber(model, "a red circle", num_inference_steps=2)
    check_bundle(v, "DiffusionScrubber(steps=2, step=1, image=64x64, x0=yes)")
    assert v.n_steps == 2 and len(v.decoded) == len(v.x0) == len(v.latents) == 2
    assert v.controls["step"].max == 1
    final = np.asarray(v.image).astype(int)
    assert np.abs(v.decoded[-1].astype(int) - final).max() <= 1        # batch decode vs the pipeline's
    # last sigma is 0, so the step lands on its x0 (Euler's sample + dt * derivative rounds to within a level)
    assert np.abs(v.x0[-1].astype(int) - v.decoded[-1].astype(int)).max() <= 1
    png = v.png()
    v.controls["step"].value = 0
    assert repr(v).startswith("DiffusionScrubber(steps=2, step=0,") and v.png() != png
    np.testing.assert_array_equal(np.asarray(image_arrays(v.figure(), 0)[0]), v.decoded[0])


def test_diffusion_scrubber_from_a_trace(model, image_trace):
    t, res = image_trace
    v = V.diffusion_scrubber(model, trace=t)
    assert v.n_steps == 2
    torch.testing.assert_close(v.latents[1], t["detok.step.1.latents"][0])
    assert np.abs(v.decoded[-1].astype(int) - np.asarray(res.image).astype(int)).max() <= 1


# --------------------------------------------------------------------------- display plumbing

def test_live_widget_view_when_a_frontend_is_connected(monkeypatch, wide):
    v = V.tiling_viewer(wide, base=64)
    monkeypatch.setattr(V, "FRONTEND", True)
    data = v._repr_mimebundle_()
    assert set(data) == {"text/plain", "image/png", V.WIDGET_MIME}
    assert data[V.WIDGET_MIME]["model_id"] == v.widget.model_id
    v.set(grid="1x1")                                        # a live front end gets the new picture at once
    assert bytes(v._picture.value) == v.png() and v.png().startswith(PNG_MAGIC)
    assert v._repr_mimebundle_(exclude={V.WIDGET_MIME}).keys() == {"text/plain", "image/png"}


def test_widget_picture_catches_up_without_a_frontend(wide):
    v = V.tiling_viewer(wide, base=64)
    w = v.widget
    v.set(grid="4x1")
    assert v.widget is w and bytes(v._picture.value) == v.png()


def test_no_pyplot_figures_and_stable_text(model, wide):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = set(plt.get_fignums())
    a = V.tiling_viewer(wide, base=64)
    b = V.tiling_viewer(wide, base=64)
    assert isinstance(a.figure(), Figure) and a.png() and b.png()
    assert repr(a) == repr(b)
    assert set(plt.get_fignums()) == before
    with pytest.raises(KeyError, match="no control"):
        a.set(nope=1)


# --------------------------------------------------------------------------- LLM / image-side attention, patching

PROMPT = "we start with a big red circle on the left . it looks like this :"


def test_attention_viewer_llm_mode_rows_are_the_traced_attention(model):
    v = V.attention_viewer(model, PROMPT, which="llm")
    ids = torch.tensor([model.encode_ids(PROMPT)])
    P, L = ids.shape[1], model.config.llm.num_hidden_layers
    H = model.config.llm.num_attention_heads
    check_bundle(v, f"TokenAttentionViewer(layers={L}, heads={H}, positions={P}, layer={L - 1}, head=mean, "
                    f"query={P - 1})")
    with seedx_lab.trace(model, capture=["llm.layers.1.attn"]) as t:
        model.lvlm.llm(input_ids=ids)
    a = t["llm.layers.1.attn"][0]                                           # [heads, P, P]
    v.set(layer=1, head=2, query=5)
    np.testing.assert_allclose(v.row(), a[2, 5].numpy(), atol=1e-6)
    assert v.row()[6:].max() == 0 and abs(v.row().sum() - 1) < 1e-5
    np.testing.assert_allclose(v.by_layer()[1], a[2, 5].numpy(), atol=1e-6)


def test_attention_viewer_output_resampler_and_adapter_modes(model):
    g = V.attention_viewer(model, "a big red circle on the left", which="output_resampler")
    assert g.n_queries == 64 and g.heatmaps()[0].shape == (8, 8)
    assert abs(g.heatmaps()[0].sum() - 1) < 1e-4
    d = V.attention_viewer(model, "a big red circle on the left", which="detok.adapter")
    assert len(d.attn) == len(model.detok.resampler.layers) and [h.shape for h in d.heatmaps()] == [(8, 8), (8, 8)]
    assert abs(sum(h.sum() for h in d.heatmaps()) - 1) < 1e-4            # inputs + latents = the whole row
    check_bundle(d, repr(d))
    with pytest.raises(ValueError, match="which must be one of"):
        V.attention_viewer(model, "x", which="llm.attn")


def test_patching_explorer_map_and_cell(model):
    clean, corrupt = PROMPT, PROMPT[:-1] + "."
    e = V.patching_explorer(model, clean, corrupt, max_new_tokens=4)
    g = probes.activation_patching(model, clean, corrupt)
    np.testing.assert_allclose(e.grid.raw_denoise, g.raw_denoise, atol=1e-5)
    P = len(g.clean_ids)
    check_bundle(e, f"PatchingExplorer(tokens={P}, sites={len(g.sites)}, site={g.sites[-1]}, position={P - 1}, "
                    "direction=denoise)")
    # the last layer at the last position carries the clean run's whole prediction
    ids = torch.tensor([g.clean_ids])
    p_clean = model.lvlm.llm(input_ids=ids).logits[0, -1].softmax(-1)[model.token_ids.boi].item()
    assert abs(e.cell_p - p_clean) < 1e-5
    e.set(position=2)
    p_corrupt = model.lvlm.llm(input_ids=torch.tensor([g.corrupt_ids])).logits[0, -1].softmax(-1)[model.token_ids.boi].item()
    assert abs(e.cell_p - p_corrupt) < 1e-5                                # prompts agree there: nothing moves
    e.set(corrupt="a red circle .")
    assert "same token length" in e.error and len(e.grid.clean_ids) == P   # the last good pair stays
