"""Type A (chameleon-tiny) against Type B3 (seedx-tiny): the measurements notebook 11 and the benchmark share.

Every function takes either arm (a :class:`~seedx_lab.model.SeedX` or a
:class:`~seedx_lab.typea.model.ChameleonTiny`) and measures the same thing on both:

* :func:`image_cost`: image tokens, LLM forward passes and KV-cache bytes of one caption -> image;
* :func:`story_layout`: where a story continuation opens ``<img>`` and what follows ``</img>``;
* :func:`variety`: how much pictures of one caption differ between seeds (Type A samples its codes,
  Type B3's block is deterministic and its seed only moves the diffusion noise);
* :func:`describe_by_aspect`: describing accuracy on square, wide and tall held-out pictures;
* :func:`boi_counts`: the counts behind ``boi_f1`` and ``false_boi``, for rates with intervals.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .. import tokens as T
from ..shapeworld import world as W


def is_typea(model) -> bool:
    from ..shapeworld.evaluate import is_typea as _is

    return _is(model)


def llm_of(model):
    """The causal LM that writes the tokens (``model.llm`` for Type A, ``model.lvlm.llm`` for a SeedX)."""
    return model.llm if is_typea(model) else model.lvlm.llm


class LLMCalls:
    """Counts forward calls of ``llm`` and keeps the KV cache it was last called with (a forward pre-hook).
    Use as a context manager; the hook is removed on exit."""

    def __init__(self, llm):
        self.llm, self.calls, self.cache, self.handle = llm, 0, None, None

    def __enter__(self):
        self.handle = self.llm.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, kwargs):
        self.calls += 1
        self.cache = kwargs.get("cache", kwargs.get("past_key_values", self.cache))


def cache_bytes(cache) -> int:
    """Bytes of every key / value tensor held by a transformers ``DynamicCache`` (0 for None)."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def image_tokens(model) -> int:
    """Tokens between ``<img>`` and ``</img>``: N codes (Type A) or the N forced queries (Type B3; 64 in seedx-tiny)."""
    return model.num_codes if is_typea(model) else model.lvlm.num_img_tokens


@torch.no_grad()
def image_llm_part(model, caption: str):
    """The LLM part of caption -> image, greedy: Type A's ``N + 1`` chosen tokens (ids ``[1, N + 1]``),
    Type B3's forced block (the output-resampled features ``[64, vit_dim]``)."""
    ids = torch.tensor([model.encode_ids(T.generation_prompt(caption))], device=model.device)
    if is_typea(model):
        return model.generate_ids(ids, model.num_codes + 1)
    out = model.lvlm.generate(ids, max_new_tokens=model.lvlm.num_img_tokens + 1,
                              eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
    return out.images[0][0].features


@torch.no_grad()
def image_decoder_part(model, llm_out, seed: int = 0):
    """The decoder part: VQ decoder of the codes (Type A; ``[1, 3, 64, 64]``) or the diffusion de-tokenizer
    at its default steps (Type B3; a PIL image)."""
    if is_typea(model):
        return model.vq.decode(model.ids_to_codes(llm_out[:, : model.num_codes]))
    return model.draw(llm_out, seed=seed)


@dataclass
class ImageCost:
    tokens: int            # image tokens between <img> and </img>
    passes: int            # LLM forward passes of caption -> image, prompt included
    cache_bytes: int       # KV cache held when the block is done


def image_cost(model, caption: str) -> ImageCost:
    """Count (not time) what one greedy caption -> image costs the LLM."""
    with LLMCalls(llm_of(model)) as c:
        image_llm_part(model, caption)
    return ImageCost(image_tokens(model), c.calls, cache_bytes(c.cache))


@dataclass
class StoryLayout:
    """One continuation of a story prompt. ``pictures``: complete blocks; ``after_trigger``: of those, how
    many opened right after text ending in ``:`` (the world's trigger phrases end so); ``text_after``:
    words written after the first ``</img>``; ``ended``: the continuation reached ``</s>``."""

    text: str
    pictures: int
    after_trigger: int
    text_after: int
    ended: bool
    images: list


@torch.no_grad()
def story_layout(model, prompt: str, max_new_tokens: int = 120, max_images: int = 3, seed: int = 0) -> StoryLayout:
    """Continue ``prompt`` greedily with text and pictures (each arm's own ``generate``) and read the layout."""
    if is_typea(model):
        out = model.generate(prompt, max_new_tokens=max_new_tokens, max_images=max_images, seed=seed)
        new = out.new_ids
    else:
        out = model.generate(prompt, max_new_tokens=max_new_tokens, max_images=max_images, seed=seed,
                             processor_mode="strict")
        new = out.output.new_tokens[0]
    text = out.text
    parts = text.split(T.BOI_TOKEN)
    before = [prompt + parts[0]] + [p.split(T.EOI_TOKEN)[-1] for p in parts[1:-1]]
    after_trigger = sum(b.rstrip().endswith(":") for b in before[: len(out.images)])
    tail = text.split(T.EOI_TOKEN, 1)[1] if T.EOI_TOKEN in text else ""
    words = [w for w in tail.replace(T.BOI_TOKEN, " ").replace(T.EOI_TOKEN, " ").split() if w]
    ended = model.tokenizer.eos_token_id in new.tolist()
    return StoryLayout(text, len(out.images), after_trigger, len(words), ended, out.images)


def _pixels(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        return img.detach().float().cpu().numpy().reshape(-1)
    return np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32).reshape(-1) / 255.0


@torch.no_grad()
def variety(model, caption: str, seeds=(0, 1, 2, 3), temperature: float = 1.0, top_k: int | None = None) -> dict:
    """Pictures of one caption under several seeds: ``distinct`` (how many differ in any pixel),
    ``mean_abs`` (mean absolute pixel difference over all pairs, pixels in [0, 1]), ``images``.
    Type A samples its codes (``sample=True``); Type B3's seed goes to the de-tokenizer's noise."""
    if is_typea(model):
        imgs = [model.generate_image(caption, sample=True, seed=s, temperature=temperature, top_k=top_k).image
                for s in seeds]
    else:
        feats = image_llm_part(model, caption)                       # the block does not depend on the seed
        imgs = [model.draw(feats, seed=s) for s in seeds]
    px = [_pixels(im) for im in imgs]
    pairs = list(itertools.combinations(range(len(px)), 2))
    mean_abs = float(np.mean([np.abs(px[i] - px[j]).mean() for i, j in pairs])) if pairs else 0.0
    distinct = len({p.tobytes() for p in px})
    return dict(distinct=distinct, mean_abs=mean_abs, images=imgs)


ASPECT_KIND = {(64, 64): "square", (128, 128): "square", (128, 64): "wide", (192, 64): "wide",
               (64, 128): "tall", (64, 192): "tall"}


@torch.no_grad()
def describe_by_aspect(model, seeds, split: str = "test") -> dict:
    """``{kind: (hits, n)}`` for kind in square / wide / tall: the description names the first object's
    shape, colour and position (as ``caption_acc``), on the held-out comprehension pictures of ``seeds``."""
    out = {"square": [0, 0], "wide": [0, 0], "tall": [0, 0]}
    for s in seeds:
        sm = W.comprehension_sample(s, split)
        kind = ASPECT_KIND[tuple(sm.image.size)]
        said = {(d.get("shape"), d.get("colour"), d.get("position")) for d in W.parse_description(model.describe(sm.image))}
        out[kind][0] += sm.scene.objects[0].triple in said
        out[kind][1] += 1
    return {k: tuple(v) for k, v in out.items()}



@torch.no_grad()
def boi_counts(model, seeds, split: str = "test") -> dict:
    """The counts behind ``boi_f1`` and ``false_boi`` (:func:`seedx_lab.shapeworld.evaluate.boi_scores`):
    ``tp``, ``fp``, ``fn`` of teacher-forced greedy ``<img>`` choices over the held-out stories of ``seeds``,
    and ``false``: text-only samples (of ``n``) in which ``<img>`` is opened. Rates with intervals are built
    from these."""
    from ..shapeworld.evaluate import boi_predictions, text_only_boi

    seeds = list(seeds)
    tp = fp = fn = 0
    for s in seeds:
        pred, act = boi_predictions(model, W.story_sample(s, split).segments)
        tp += sum(p and a for p, a in zip(pred, act))
        fp += sum(p and not a for p, a in zip(pred, act))
        fn += sum(a and not p for p, a in zip(pred, act))
    false = sum(text_only_boi(model, s, split) for s in seeds)
    return dict(tp=tp, fp=fp, fn=fn, false=false, n=len(seeds))
