"""Held-out evaluation of a SeedX model, or of a Type-A ChameleonTiny, on the shape world (``seedx-lab eval``).

Four numbers, each on the **test** split (its primary objects are (shape, colour, position)
triples never seen in training):

* ``caption_acc`` — image → text: the generated description names the primary object's shape,
  colour and position (parsed with ``world.parse_description``);
* ``image_acc`` — text → image: the pixel judge finds the caption's object with the right shape,
  colour and position in the generated image (attributes a caption does not state are not checked);
* ``boi_f1`` — reading held-out stories token by token (teacher forcing), the model's greedy
  choice after the published processor is ``<img>`` exactly where the story has an image: F1 over
  all text positions;
* ``false_boi`` — fraction of text-only samples in which the model emits ``<img>`` anywhere, while
  reading them or in a greedy continuation of 16 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import judge as J
from . import world as W
from ..generation import AutoImageTokenGenerationProcessor
from ..tokens import find_image_blocks
from ..sequences import collate, encode_pieces, story_pieces


@dataclass
class EvalResult:
    caption_acc: float
    caption_exact: float          # every object of the scene named, nothing else
    image_acc: float
    boi_precision: float
    boi_recall: float
    boi_f1: float
    false_boi: float
    n: int

    def line(self) -> str:
        return (f"caption_acc={self.caption_acc:.3f} image_acc={self.image_acc:.3f} "
                f"boi_f1={self.boi_f1:.3f} false_boi={self.false_boi:.3f}")


def _triple(d: dict):
    return d.get("shape"), d.get("colour"), d.get("position")


@torch.no_grad()
def caption_accuracy(model, seeds, split="test", progress=False):
    hits, exact = 0, 0
    for s in tqdm(seeds, desc="image -> text", disable=not progress):
        sm = W.comprehension_sample(s, split)
        text = model.describe(sm.image)
        said = {_triple(d) for d in W.parse_description(text)}
        truth = [o.triple for o in sm.scene.objects]
        hits += truth[0] in said
        exact += said == set(truth)
    return hits / len(seeds), exact / len(seeds)


@torch.no_grad()
def image_accuracy(model, seeds, split="test", num_inference_steps=None, progress=False):
    hits = 0
    for s in tqdm(seeds, desc="text -> image", disable=not progress):
        sm = W.caption_image_sample(s, split)
        img = model.generate_image(sm.caption, num_inference_steps=num_inference_steps, seed=s).image
        hits += J.score_image(img, sm.caption)["all"]
    return hits / len(seeds)


def is_typea(model) -> bool:
    """True for a Type-A model (:class:`seedx_lab.typea.model.ChameleonTiny`), False for a SeedX."""
    from ..typea.model import ChameleonTiny

    return isinstance(model, ChameleonTiny)


@torch.no_grad()
def boi_predictions(model, segments):
    """Teacher-forced greedy ``<img>`` decisions at every text position of one story.

    Returns ``(predicted, actual)``: two bool lists over the positions whose next token is chosen
    freely (outside image blocks). A SeedX is read with the published processor; a Type-A model with
    its own :class:`~seedx_lab.typea.processor.CodebookBlockProcessor`, its pictures as their true codes.
    """
    if is_typea(model):
        ids = torch.tensor([model.story_ids(segments)], device=model.device)
        logits = model.llm(ids).logits[0].float()                          # [T, V]
        proc = model.processor()
    else:
        ex = encode_pieces(model, story_pieces(segments, None))
        ids = collate(model, [ex], model.device)["input_ids"]
        logits = model.lvlm(ids)["logits"][0].float()                     # [T, V]
        proc = AutoImageTokenGenerationProcessor(token_ids=model.token_ids, num_img_gen_tokens=model.lvlm.num_img_tokens)
    tid = model.token_ids
    forced = set()
    for blk in find_image_blocks(ids[0], tid):
        forced.update(range(blk.start, blk.end - 1))                   # <img>, image tokens: next token forced
    pred, act = [], []
    for t in range(ids.shape[1] - 1):
        if t in forced:
            continue
        scores = proc(ids[:, : t + 1], logits[t: t + 1])
        pred.append(int(scores.argmax(-1)) == tid.boi)
        act.append(int(ids[0, t + 1]) == tid.boi)
    return pred, act


@torch.no_grad()
def boi_scores(model, seeds, split="test", progress=False):
    tp = fp = fn = 0
    for s in tqdm(seeds, desc="stories", disable=not progress):
        pred, act = boi_predictions(model, W.story_sample(s, split).segments)
        tp += sum(p and a for p, a in zip(pred, act))
        fp += sum(p and not a for p, a in zip(pred, act))
        fn += sum(a and not p for p, a in zip(pred, act))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    false = sum(text_only_boi(model, s, split) for s in tqdm(seeds, desc="text only", disable=not progress))
    return precision, recall, f1, false / len(seeds)


@torch.no_grad()
def text_only_boi(model, seed: int, split: str = "test") -> bool:
    """Does the model open ``<img>`` in text-only sample ``seed``, while reading it (teacher forced) or
    in a greedy continuation of 16 tokens of its first segment? (One sample of ``false_boi``.)"""
    segs = W.text_only_sample(seed, split).segments
    pred, _ = boi_predictions(model, segs)
    if any(pred):
        return True
    prompt = torch.tensor([model.encode_ids(segs[0])], device=model.device)
    if is_typea(model):        # no budget rule: what counts is whether <img> is emitted at all
        new = model.generate_ids(prompt, 16, strict_budget=False)[0]
    else:
        new = model.lvlm.generate(prompt, max_new_tokens=16, eos_token_id=model.tokenizer.eos_token_id,
                                  pad_token_id=model.tokenizer.pad_token_id).new_tokens[0]
    return model.token_ids.boi in new.tolist()


def evaluate(model, n: int = 200, split: str = "test", num_inference_steps: int | None = None,
             progress: bool = True, seed: int = 0) -> EvalResult:
    """All four numbers on ``n`` samples of each task (seeds ``seed … seed+n-1``)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    seeds = list(range(seed, seed + n))
    cap, exact = caption_accuracy(model, seeds, split, progress)
    img = image_accuracy(model, seeds, split, num_inference_steps, progress)
    p, r, f1, false = boi_scores(model, seeds, split, progress)
    return EvalResult(cap, exact, img, p, r, f1, false, n)


@torch.no_grad()
def tokenizer_ceiling(model, n: int = 200, split: str = "test", seed: int = 0, progress: bool = False) -> float:
    """The Type-A image tokenizer's ceiling: the fraction of ``n`` caption images (seeds ``seed…``) whose
    round trip image -> codes -> image the pixel judge still finds right (the caption's object with its
    shape, colour and position). No LLM is involved: generated images cannot score higher than this."""
    from ..typea.vq import round_trip

    if not is_typea(model):
        raise ValueError(f"tokenizer_ceiling needs a Type-A model (ChameleonTiny), got {type(model).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    hits = 0
    for s in tqdm(range(seed, seed + n), desc="VQ round trip", disable=not progress):
        sm = W.caption_image_sample(s, split)
        hits += J.score_image(round_trip(model.vq, sm.image), sm.caption)["all"]
    return hits / n


@torch.no_grad()
def detokenizer_ceiling(model, n: int = 200, split: str = "test", seed: int = 0, num_inference_steps: int | None = None,
                        progress: bool = False) -> float:
    """A SeedX de-tokenizer's ceiling, the Type-B3 counterpart of :func:`tokenizer_ceiling`: the fraction of
    ``n`` caption images (seeds ``seed…``) that the pixel judge finds right when the de-tokenizer draws from
    the *true* image's features (the ViT's 256 tokens pooled to the 64 regression targets
    ``[1, 64, vit_dim]``, what the LLM is trained to regress) instead of the LLM's. The drawing seed is the
    caption's seed, as in :func:`image_accuracy`."""
    from ..images import normalize
    from ..lvlm import pool_targets
    from ..training.data import image_to_unit

    if is_typea(model):
        raise ValueError("detokenizer_ceiling needs a SeedX model; for a Type-A model use tokenizer_ceiling")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    hits = 0
    for s in tqdm(range(seed, seed + n), desc="true features -> image", disable=not progress):
        sm = W.caption_image_sample(s, split)
        pixels = normalize(image_to_unit(sm.image)[None]).to(model.device, model.dtype)
        feats = pool_targets(model.vit(pixels), model.lvlm.target_pool, model.lvlm.num_out_features)[0]
        hits += J.score_image(model.draw(feats, num_inference_steps=num_inference_steps, seed=s), sm.caption)["all"]
    return hits / n
