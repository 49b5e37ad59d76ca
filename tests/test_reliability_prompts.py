"""Reliability of the text entry points: ``generate_image(caption)``, ``describe(image, question)``,
``generate(prompt)``.

Decided per entry point (and written in their docstrings):

* ``generate_image`` / ``describe``: special-token text typed by a user is refused with a ``ValueError``
  naming the token (``describe`` also refuses ``[INST]``/``[/INST]``: it writes the template itself);
* ``generate``: the same, except one trailing ``<img>`` (draw an image at once) — then ``max_new_tokens``
  must leave room for the whole block;
* a prompt (image tokens included) that does not fit the model's context is refused up front, with both
  numbers; ``max_new_tokens`` is validated; a block cut by the budget is never silent.

Refusals must happen before any LLM work: ``lvlm.generate`` is replaced by a sentinel where a check has
to pass, so the tests stay cheap.
"""
import warnings

import pytest
import torch
from PIL import Image

from seedx_lab import tokens as T
from seedx_lab.anyres import tile_image
from seedx_lab.generation import AutoImageTokenGenerationProcessor

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

IMAGE = Image.new("RGB", (40, 20), (0, 128, 255))
SPECIAL = ["<img>", "</img>", "<patch>", "</patch>", "<img_00012>", "<img_00150>", "</s>", "<s>", "<pad>"]


class Reached(Exception):
    """Raised by the sentinel: validation passed and the LLM would have run now."""


@pytest.fixture
def sentinel(model, monkeypatch):
    """Replace ``lvlm.generate``: record its ids and stop."""
    seen = {}

    def fake(input_ids, **kw):
        seen["ids"] = input_ids[0].tolist()
        seen["kw"] = kw
        raise Reached

    monkeypatch.setattr(model.lvlm, "generate", fake)
    return seen


@pytest.fixture
def no_llm(model, monkeypatch):
    """Any LLM forward is a test failure (the refusal must come first)."""
    def boom(*a, **k):
        raise AssertionError("the LLM ran before the input was checked")
    monkeypatch.setattr(model.lvlm.llm, "forward", boom)
    monkeypatch.setattr(model.vit, "forward", boom)


# --------------------------------------------------------------------------- special-token text

@pytest.mark.parametrize("token", SPECIAL)
def test_generate_image_refuses_special_token_text(model, no_llm, token):
    with pytest.raises(ValueError, match=rf"caption contains special-token text '{token}'"):
        model.generate_image(f"a red {token} circle")


@pytest.mark.parametrize("token", SPECIAL + ["[INST]", "[/INST]"])
def test_describe_refuses_special_token_text_and_markers(model, no_llm, token):
    with pytest.raises(ValueError, match=rf"question contains special-token text '{token.replace('[', '.')}'"):
        model.describe(IMAGE, f"what is {token} here")


@pytest.mark.parametrize("prompt, token", [
    ("<img> a red circle", "<img>"),                  # <img> not at the end
    ("a <img> b <img>", "<img>"),                     # only the trailing one is allowed
    ("a lone </img>", "</img>"),
    ("<patch> with no image", "<patch>"),
    ("a </patch>", "</patch>"),
    ("<img_00012> typed", "<img_00012>"),
    ("x <img_00012><img>", "<img_00012>"),
    ("stop here </s> and go on", "</s>"),
])
def test_generate_refuses_special_token_text_except_a_trailing_boi(model, no_llm, prompt, token):
    with pytest.raises(ValueError, match=rf"prompt contains special-token text '{token}'.*only a trailing <img>"):
        model.generate(prompt, max_new_tokens=80)


def test_all_tokens_of_a_refused_text_are_named(model, no_llm):
    with pytest.raises(ValueError, match=r"'<img>' \(and '<img_00001>', '</img>'\)"):
        model.generate_image("<img><img_00001></img> here")


def test_text_that_only_looks_special_is_allowed(model, sentinel):
    for caption in ["a <IMG> sign", "img_00012", "a < img > b", "patch", "2 < 3 > 1"]:
        with pytest.raises(Reached):
            model.generate_image(caption)
        ids = sentinel["ids"]
        assert ids.count(model.token_ids.boi) == 1 and ids[-1] == model.token_ids.boi
        assert not set(ids) & set(model.token_ids.img)


def test_generate_image_allows_the_instruction_markers(model, sentinel):
    with pytest.raises(Reached):
        model.generate_image("[INST] a red circle [/INST]\n")
    assert sentinel["ids"][-1] == model.token_ids.boi
    assert sentinel["kw"]["max_new_tokens"] == model.lvlm.num_img_tokens + 1


@pytest.mark.parametrize("prompt", ["a red circle<img>", "a red circle <img>  \n"])
def test_generate_allows_a_trailing_boi(model, sentinel, prompt):
    with pytest.raises(Reached):
        model.generate(prompt, max_new_tokens=65)
    assert sentinel["ids"][-1] == model.token_ids.boi and sentinel["ids"].count(model.token_ids.boi) == 1


def test_a_trailing_boi_needs_room_for_the_whole_block(model, no_llm):
    with pytest.raises(ValueError, match=r"ends in <img>.*needs 65 new tokens.*max_new_tokens=64"):
        model.generate("a red circle <img>", max_new_tokens=64)


def test_a_trailing_boi_draws_exactly_one_complete_image(model):
    r = model.generate("a red circle <img>", max_new_tokens=65, num_inference_steps=1)
    assert len(r.images) == 1 and r.output.incomplete_blocks == [[]]
    blk = r.output.images[0][0].block
    assert blk.complete and blk.n_tokens == 64 and blk.start == r.output.prompt_length - 1


# --------------------------------------------------------------------------- empty and wrong types

@pytest.mark.parametrize("caption, msg", [("", "caption is empty"), ("  \n\t", "caption is empty"),
                                          (None, r"caption must be a string, got None \(NoneType\)"),
                                          (42, r"caption must be a string, got 42 \(int\)"),
                                          (["a"], r"caption must be a string, got \['a'\] \(list\)")])
def test_empty_or_non_text_captions(model, no_llm, caption, msg):
    with pytest.raises(ValueError, match=msg):
        model.generate_image(caption)


def test_empty_prompts_for_generate_and_describe(model, sentinel, monkeypatch):
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate("   ")
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate("", images=[])
    with pytest.raises(TypeError, match=r"question must be a string, got b'what' \(bytes\)"):
        model.describe(IMAGE, b"what")
    with pytest.raises(Reached):                  # an image and no text is a valid request
        model.generate("", images=[IMAGE])
    with pytest.raises(Reached):                  # describe with an empty question too
        model.describe(IMAGE, "")


# --------------------------------------------------------------------------- context length

def test_a_caption_longer_than_the_context_names_both_numbers(model, no_llm):
    ctx = model.config.llm.max_position_embeddings
    with pytest.raises(ValueError, match=rf"prompt of 1002 tokens.*65 tokens of the image block.*context of {ctx}"):
        model.generate_image("red " * 1000)


def test_a_question_longer_than_the_context_counts_the_image_tokens(model, no_llm):
    ctx = model.config.llm.max_position_embeddings
    n_views = len(tile_image(IMAGE, base=model.config.tile_size))
    n_img = n_views * (model.lvlm.num_img_tokens + 2)
    with pytest.raises(ValueError, match=rf"prompt is \d+ tokens long \({n_img} of them in image blocks.*"
                                         rf"context of {ctx}"):
        model.describe(IMAGE, "red " * 1000)


def test_too_many_images_for_the_context(model, no_llm):        # refused before the ViT runs
    big = Image.new("RGB", (128, 128))                          # a 2x2 grid: 5 views of 66 tokens
    with pytest.raises(ValueError, match=r"prompt is 1322 tokens long \(1320 of them in image blocks, 2 text\), "
                                         r"longer than the model's context of 1024"):
        model.generate("hi", images=[big] * 4, max_new_tokens=5)


def test_prompt_plus_max_new_tokens_must_fit_and_the_boundary_is_allowed(model):
    ctx = model.config.llm.max_position_embeddings
    ids = torch.tensor([model.encode_ids("red " * (ctx - 2))])
    n = ids.shape[1]
    assert n == ctx - 1
    with pytest.raises(ValueError, match=rf"{n} tokens long.*max_new_tokens=2 it needs {n + 2} positions.*"
                                         rf"context of {ctx}.*at most {ctx - n}"):
        model.lvlm.generate(ids, max_new_tokens=ctx - n + 1, eos_token_id=None)
    out = model.lvlm.generate(ids, max_new_tokens=ctx - n, eos_token_id=None, processor_mode="strict")
    assert out.sequences.shape[1] <= ctx


# --------------------------------------------------------------------------- max_new_tokens

@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "10", None])
def test_max_new_tokens_is_validated(model, no_llm, bad):
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int of at least 1, got"):
        model.generate("a red circle", max_new_tokens=bad)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int"):
        model.describe(IMAGE, max_new_tokens=bad)


class PushBoi:
    """A processor that makes ``<img>`` the model's favourite token (a random model never picks it)."""

    def __init__(self, boi):
        self.boi = boi

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.boi] = scores.max(-1).values + 50
        return scores


def _processors(model, mode):
    return [PushBoi(model.token_ids.boi), AutoImageTokenGenerationProcessor(token_ids=model.token_ids, mode=mode)]


def test_faithful_generate_warns_when_the_budget_cuts_a_block(model):
    with pytest.warns(UserWarning, match=r"cut off"):
        r = model.generate("a red circle", max_new_tokens=20, logits_processor=_processors(model, "faithful"))
    assert r.images == [] and len(r.output.incomplete_blocks[0]) == 1
    assert not r.output.incomplete_blocks[0][0].complete


def test_strict_generate_never_starts_a_block_it_cannot_finish(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = model.generate("a red circle", max_new_tokens=20, logits_processor=_processors(model, "strict"))
    new = r.output.new_tokens[0].tolist()
    assert len(new) == 20 and model.token_ids.boi not in new and r.images == []
    assert r.output.incomplete_blocks == [[]]


def test_with_enough_budget_the_pushed_block_completes(model):
    r = model.generate("a red circle", max_new_tokens=70, max_images=1, num_inference_steps=1,
                       logits_processor=_processors(model, "strict"))
    assert len(r.images) == 1 and r.output.incomplete_blocks == [[]]
    blocks = T.find_image_blocks(r.output.sequences[0], model.token_ids)
    assert [b.complete for b in blocks] == [True] and blocks[0].n_tokens == model.lvlm.num_img_tokens


def test_generate_image_has_its_budget_by_construction(model):
    r = model.generate_image("a red circle", num_inference_steps=1)
    new = r.output.new_tokens[0].tolist()
    assert new == model.token_ids.generation_block()
    assert r.output.incomplete_blocks == [[]] and r.features.shape == (64, model.config.vit.output_dim)


def test_errors_leave_the_model_usable(model):
    before = model.describe(IMAGE, max_new_tokens=4)
    for call in (lambda: model.generate_image("<img>"), lambda: model.describe(IMAGE, "[INST]"),
                 lambda: model.generate("a", max_new_tokens=0), lambda: model.generate_image("red " * 1000)):
        with pytest.raises(ValueError):
            call()
    assert model.lvlm.generation_observers == [] and not model.training
    assert model.describe(IMAGE, max_new_tokens=4) == before
