"""SeedX: the whole pipeline in one object — tokenizer, ViT, ContinuousLVLM, de-tokenizer.

``seedx_lab.load("seedx-tiny")`` returns a :class:`SeedX` built from ``data/seedx-tiny``
(``config.json``, ``model.safetensors``, the tokenizer files). Its methods run the pipeline:

* :meth:`SeedX.generate_image` — caption → ``{caption}<img>`` → N forced tokens (``config.num_img_tokens``,
  64 as published) → output resampler (N → 64 features) → de-tokenizer → image;
* :meth:`SeedX.describe` — image → any-res tiles → ViT → input resampler → LLM → text;
* :meth:`SeedX.generate` — interleaved text and images, images starting wherever the model itself
  predicts ``<img>``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import tokens as T
from . import validate as V
from .files import stage_file
from .anyres import tile_image
from .detokenizer import Detokenizer, DetokenizerConfig
from .lvlm import ContinuousLVLM, GenerateOutput, LLMConfig, build_lvlm
from .sequences import block_masks
from .vit import ViTConfig, VisionTransformer

DESCRIBE_QUESTION = "describe the image ."
_UNCHECKED = object()          # comprehension_inputs: no max_new_tokens to check
# The de-tokenizer's unconditional input under classifier-free guidance:
#   "zeros"          all-zero features (what seedx-tiny's stage b drops conditions to, cond_drop_prob)
#   "vit_zero_image" the ViT features of an all-zero (normalised) image, pooled like the target
#                    (what the published SDXLAdapter passes as its negative)
NEGATIVES = ("zeros", "vit_zero_image")
# may be absent from a config.json (written before the field existed): "negative" means "zeros",
# "num_img_tokens" means 64 (every checkpoint saved before it had 64-token blocks)
_OPTIONAL_FIELDS = ("negative", "num_img_tokens")
MAX_IMG_TOKENS = T.NUM_IMG_VOCAB       # <img_00000>…<img_00099>: the image tokens a SEED-X vocabulary holds


@dataclass
class SeedXConfig:
    """Widths of every stage plus the few numbers that tie them together."""

    vit: ViTConfig
    llm: LLMConfig
    detok: DetokenizerConfig
    tile_size: int = 64                  # any-res base resolution (448 published)
    resampler_heads: int = 4
    add_patch_pos: bool = True
    target_pool: str = "1d"
    lm_loss_scale: float = 1.0
    rec_loss_scale: float = 6.0
    num_inference_steps: int = 25
    guidance_scale: float = 1.0
    input_locality: float = 0.0          # place bias of the input resampler (0: published; see ResamplerConfig)
    input_local_heads: int | None = None
    negative: str = "zeros"              # guidance's unconditional input, one of NEGATIVES (published: vit_zero_image)
    # image tokens per <img> block: the input resampler's queries, the LLM's tokens per block (prompts and
    # generation) and the output resampler's input count. The output resampler still hands the de-tokenizer
    # 64 features (64 -> 64 published; N -> 64 otherwise). A square number (the resamplers place tokens on a
    # square grid), at most the 100 image tokens of the vocabulary
    num_img_tokens: int = T.NUM_IMG_TOKENS

    def __post_init__(self):
        if self.negative not in NEGATIVES:
            raise ValueError(f"negative must be one of {NEGATIVES}, got {self.negative!r}")
        check_num_img_tokens(self.num_img_tokens)

    @classmethod
    def tiny(cls, vocab_size: int) -> "SeedXConfig":
        vit = ViTConfig.tiny()
        # guidance 3 was chosen on the validation split (docs/experiments.md); the de-tokenizer learns the
        # unconditional branch from dropped conditions
        # a place bias in 2 of the input resampler's 4 heads: objects in company lent each other attributes
        # when every query gathered cells by content alone (notebook 02, section 4)
        return cls(vit=vit, llm=LLMConfig.tiny(vocab_size), detok=DetokenizerConfig.tiny(vit.output_dim),
                   guidance_scale=3.0, input_locality=100.0, input_local_heads=2)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("vit", "llm", "detok")}
        d.update(vit=asdict(self.vit), llm=asdict(self.llm), detok=self.detok.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: dict, strict: bool = False) -> "SeedXConfig":
        """Inverse of :meth:`to_dict`. ``strict``: every field must be present, as :meth:`SeedX.save` writes
        them all — a missing one is an error naming it (``llm.hidden_size``), never a silent default
        (the defaults are the published sizes)."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object / dict, got {type(d).__name__}")
        d = dict(d)
        for key in ("vit", "llm", "detok"):
            if key not in d:
                raise ValueError(f"config is missing the field {key!r}")
            if not isinstance(d[key], dict):
                raise ValueError(f"config field {key!r} must be an object, got {type(d[key]).__name__}")
        if strict:      # "negative" came later: a config.json without it is seedx-tiny's, trained on zeros
            missing = [f.name for f in fields(cls) if f.name not in d and f.name not in _OPTIONAL_FIELDS]
            for key, sub in (("vit", ViTConfig), ("llm", LLMConfig), ("detok", DetokenizerConfig)):
                missing += [f"{key}.{f.name}" for f in fields(sub) if f.name not in d[key]]
            if missing:
                raise ValueError(f"config is missing the field(s) {', '.join(missing)}")
        V.config_types(cls, d)                  # "hidden_size": "64" is named here, not deep in torch
        for key, sub in (("vit", ViTConfig), ("llm", LLMConfig), ("detok", DetokenizerConfig)):
            V.config_types(sub, d[key], where=key + ".")
        if "tile_size" in d:
            V.tile_base("tile_size", d["tile_size"])
        if "target_pool" in d:
            V.choice("target_pool", d["target_pool"], ("1d", "2d"))
        timesteps = d["detok"].get("scheduler", {}).get("num_train_timesteps", 1000)
        for where, sub in (("", d), ("detok.", d["detok"])):
            if "num_inference_steps" in sub:
                V.positive_int(where + "num_inference_steps", sub["num_inference_steps"], high=timesteps)
            if "guidance_scale" in sub:
                V.guidance(where + "guidance_scale", sub["guidance_scale"], allow_none=False)
        try:
            vit, llm, detok = ViTConfig(**d.pop("vit")), LLMConfig(**d.pop("llm")), DetokenizerConfig.from_dict(d.pop("detok"))
            return cls(vit=vit, llm=llm, detok=detok, **d)
        except TypeError as e:
            raise ValueError(f"config is missing or has an unknown field: {e}") from None


def check_num_img_tokens(n) -> int:
    """``n`` as an image-token count per block: an int, a square number in [1, 100] (16, 64 …), else a
    ``ValueError`` saying which values are allowed."""
    allowed = [k * k for k in range(1, int(MAX_IMG_TOKENS ** 0.5) + 1)]
    if isinstance(n, bool) or not isinstance(n, int) or n not in allowed:
        raise ValueError(f"num_img_tokens must be a square number of image tokens per block between 1 and "
                         f"{MAX_IMG_TOKENS} (one of {', '.join(map(str, allowed))}: the resamplers place them on "
                         f"a square grid, and the vocabulary holds {MAX_IMG_TOKENS} image tokens), got {n!r}")
    return n


@dataclass
class ImageResult:
    """What :meth:`SeedX.generate_image` returns."""

    image: object                       # PIL.Image
    prompt: str
    output: GenerateOutput              # the LLM's generation (tokens, hidden states, blocks)
    features: torch.Tensor              # [64, vit_dim] output-resampled features fed to the de-tokenizer


@dataclass
class InterleavedResult:
    """What :meth:`SeedX.generate` returns: ``text`` (with ``<img>`` marks), ``images`` in order,
    and ``segments`` alternating str and PIL images as they appeared."""

    text: str
    images: list
    segments: list
    output: GenerateOutput


class SeedX(nn.Module):
    def __init__(self, config: SeedXConfig, tokenizer, device=None, dtype=None, *,
                 vit: VisionTransformer | None = None, lvlm: ContinuousLVLM | None = None,
                 detok: Detokenizer | None = None):
        """Build every stage from ``config``, or adopt stages already built (``vit``, ``lvlm``, ``detok``;
        e.g. published weights loaded by :mod:`seedx_lab.checkpoints`), which are used as they are."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.token_ids = T.ImageTokenIds.from_tokenizer(tokenizer, config.num_img_tokens)
        if len(tokenizer) > config.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LLM vocabulary is {config.llm.vocab_size}")
        self.vit = vit if vit is not None else VisionTransformer(config.vit, device=device, dtype=dtype)
        self.lvlm = lvlm if lvlm is not None else build_lvlm(
            config.llm, config.vit.output_dim, self.token_ids, config.resampler_heads,
            num_out_features=config.detok.num_queries,
            input_locality=config.input_locality, input_local_heads=config.input_local_heads,
            device=device, dtype=dtype, add_patch_pos=config.add_patch_pos,
            target_pool=config.target_pool, lm_loss_scale=config.lm_loss_scale,
            rec_loss_scale=config.rec_loss_scale)
        self.detok = detok if detok is not None else Detokenizer(config.detok, device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.lvlm.parameters()).device        # patch_pos_embed is absent when add_patch_pos=False

    @property
    def dtype(self) -> torch.dtype:
        return self.lvlm.llm.get_input_embeddings().weight.dtype

    # ------------------------------------------------------------------ pieces

    def encode_ids(self, text: str, bos: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.tokenizer.bos_token_id] if bos else []) + ids

    def decode(self, ids, keep_image_tokens: bool = False) -> str:
        """Token ids -> text. Image tokens are dropped unless asked; ``<img>``/``</img>`` stay as marks."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        drop = {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        if not keep_image_tokens:
            drop |= set(self.token_ids.img)
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False).strip()

    @torch.no_grad()
    def encode_image(self, image):
        """An image -> (ViT features ``[n_views, 256, vit_dim]``, positions ``[n_views, 2]``, tiles)."""
        tiles = tile_image(image, base=self.config.tile_size, device=self.device, dtype=self.dtype)
        return self.vit(tiles.pixels), tiles.positions, tiles

    def image_prompt(self, n_views: int) -> str:
        return T.comprehension_prompt(n_views, self.lvlm.num_img_tokens)

    def _check_user_text(self, text, what: str, allow_empty: bool = False, allow_markers: bool = True,
                         allow_trailing_boi: bool = False) -> str:
        """``text`` as typed by a user: a string, not empty (unless allowed), without special-token text."""
        text = _check_text(text, what, allow_empty=allow_empty)
        body = text
        if allow_trailing_boi and body.rstrip().endswith(T.BOI_TOKEN):
            body = body.rstrip()[: -len(T.BOI_TOKEN)]
        tok = self.tokenizer
        extra = [t for t in (tok.bos_token, tok.eos_token, tok.pad_token) if isinstance(t, str) and t]
        if not allow_markers:
            extra += list(T.INSTRUCTION_MARKERS)
        found = T.special_token_text(body, extra)
        if found:
            where = " (only a trailing <img> is allowed here)" if allow_trailing_boi else ""
            raise ValueError(f"{what} contains special-token text {found[0]!r}"
                             f"{' (and ' + ', '.join(map(repr, found[1:])) + ')' if found[1:] else ''}{where}: "
                             "it would be read as an image-block or control token, not as words; remove it "
                             "(to show the model an image, pass the image itself)")
        return text

    # ------------------------------------------------------------------ tasks

    @torch.no_grad()
    def generate_image(self, caption: str, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       seed: int | None = 0, processor_mode: str = "faithful", **generate_kwargs) -> ImageResult:
        """Caption -> image, the published way: the prompt ends in ``<img>``, the block is forced.

        ``caption`` is plain text: special-token text typed in it (``<img>``, ``</img>``, ``<patch>``,
        ``<img_00012>``, ``</s>`` …) is refused with a ``ValueError`` naming the token, since it would be
        read as a token and break the block. The instruction markers ``[INST]``/``[/INST]`` are allowed.
        ``max_new_tokens`` is always N + 1 (``config.num_img_tokens`` image tokens, 64 as published, and
        ``</img>``), enough by construction; a caption
        too long for the model's context leaves no room for them and is refused (``ValueError`` with both
        numbers). ``num_inference_steps``, ``guidance_scale`` and ``seed`` are checked as in :meth:`draw`,
        sampling settings in ``generate_kwargs`` (``temperature`` > 0, ``top_p`` in (0, 1]) too, all before
        the LLM runs."""
        caption = self._check_user_text(caption, "caption")
        steps, guidance, seed = self._check_drawing(num_inference_steps, guidance_scale, seed)
        _check_decoding(processor_mode, generate_kwargs)
        prompt = T.generation_prompt(caption)
        ids = torch.tensor([self.encode_ids(prompt)], device=self.device)
        ctx, need = self.config.llm.max_position_embeddings, self.lvlm.num_img_tokens + 1
        if ids.shape[1] + need > ctx:
            raise ValueError(f"the caption makes a prompt of {ids.shape[1]} tokens; with the {need} tokens of the "
                             f"image block that is {ids.shape[1] + need}, more than the model's context of {ctx} "
                             f"(max_position_embeddings): shorten the caption by {ids.shape[1] + need - ctx} token(s)")
        out = self.lvlm.generate(ids, max_new_tokens=need, processor_mode=processor_mode,
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                 **generate_kwargs)
        if not out.images[0]:
            raise RuntimeError("the image block did not complete")     # cannot happen with a forcing processor
        feats = out.images[0][0].features
        image = self._draw(feats, steps, guidance, seed)
        return ImageResult(image, prompt, out, feats)

    @torch.no_grad()
    def negative_features(self) -> torch.Tensor:
        """The de-tokenizer's unconditional input ``[1, 64, vit_dim]`` as ``config.negative`` says.

        ``"vit_zero_image"``: the ViT on an all-zero ``[1, 3, S, S]`` image, pooled 256 -> 64 as the
        regression target is; computed once per device, dtype and ViT weights (an optimizer step or a
        ``load_state_dict`` changes the weights' version counters and so recomputes it).
        ``"zeros"``: zeros."""
        n, dim = self.lvlm.num_out_features, self.config.vit.output_dim
        if self.config.negative == "zeros":
            return torch.zeros(1, n, dim, device=self.device, dtype=self.dtype)
        params = list(self.vit.parameters())
        device, dtype = params[0].device, params[0].dtype          # where the ViT runs
        key = (self.config.negative, device, dtype, tuple(id(p) for p in params), tuple(p._version for p in params))
        cache = self.__dict__.setdefault("_negative_cache", {})
        if key not in cache:
            from .lvlm import pool_targets

            s = self.config.vit.image_size
            zeros = torch.zeros(1, 3, s, s, device=device, dtype=dtype)
            cache.clear()
            cache[key] = pool_targets(self.vit(zeros), self.lvlm.target_pool, n)   # [1, 64, vit_dim]
        return cache[key]

    @torch.no_grad()
    def draw(self, features: torch.Tensor, num_inference_steps: int | None = None, guidance_scale: float | None = None,
             seed: int | None = 0, callback=None, negative_features: torch.Tensor | None = None):
        """De-tokenize ``[64, vit_dim]`` (or ``[B, 64, vit_dim]``) features into PIL image(s).

        ``num_inference_steps``: an int in [1, the scheduler's ``num_train_timesteps``], or None for the
        config's. ``guidance_scale``: a finite number in [0, 100], or None for the config's; as in diffusers,
        a scale <= 1 switches classifier-free guidance off (the conditional prediction alone), above 1 it
        extrapolates away from the unconditional one. ``seed``: an int in [0, 2**64 - 1], or None for
        fresh randomness. ``negative_features``: the unconditional input of guidance (``[64, vit_dim]`` or
        ``[1 or B, 64, vit_dim]``); default :meth:`negative_features`, i.e. what ``config.negative`` names."""
        steps, guidance, seed = self._check_drawing(num_inference_steps, guidance_scale, seed)
        want = self.detok.config.embedding_dim
        if not isinstance(features, torch.Tensor) or features.dim() not in (2, 3) or features.shape[-1] != want \
                or features.shape[-2] < 1:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"draw needs features [tokens, {want}] or [batch, tokens, {want}] "
                             f"(the output resampler's), got {got}")
        return self._draw(features, steps, guidance, seed, callback, negative_features)

    def _check_drawing(self, num_inference_steps, guidance_scale, seed):
        """The de-tokenizer's settings, checked (None: the config's steps and guidance, a fresh seed)."""
        T_train = int(self.detok.scheduler.config.num_train_timesteps)
        steps = V.positive_int("num_inference_steps", num_inference_steps, high=T_train, allow_none=True)
        guidance = V.guidance("guidance_scale", guidance_scale)
        return (steps or self.config.num_inference_steps,
                self.config.guidance_scale if guidance is None else guidance, V.seed("seed", seed))

    def _draw(self, features, steps: int, guidance: float, seed: int | None, callback=None, negative_features=None):
        """Checked settings in; ``negative_features`` None means :meth:`negative_features`."""
        want = self.detok.config.embedding_dim
        batched = features.dim() == 3
        feats = features if batched else features[None]                     # [B, 64, vit_dim]
        neg = None
        if negative_features is not None and (not isinstance(negative_features, torch.Tensor)
                                              or negative_features.shape[-2:] != feats.shape[-2:]
                                              or negative_features.dim() not in (2, 3)
                                              or (negative_features.dim() == 3
                                                  and negative_features.shape[0] not in (1, feats.shape[0]))):
            got = tuple(negative_features.shape) if isinstance(negative_features, torch.Tensor) \
                else type(negative_features).__name__
            raise ValueError(f"negative_features must be [{feats.shape[1]}, {want}] or [1 or {feats.shape[0]}, "
                             f"{feats.shape[1]}, {want}] like the features, got {got}")
        if guidance > 1.0:                   # the unconditional branch only runs when guiding
            neg = self.negative_features() if negative_features is None else negative_features
            neg = (neg if neg.dim() == 3 else neg[None]).to(feats.device, feats.dtype)
            if neg.shape[0] == 1:
                neg = neg.expand(feats.shape[0], -1, -1)
        g = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        imgs = self.detok.sample(feats, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                                 callback=callback, negative_features=neg)
        return imgs if batched else imgs[0]

    @torch.no_grad()
    def describe(self, image, question: str = DESCRIBE_QUESTION, max_new_tokens: int = 24) -> str:
        """Image -> text, as SEED-X-I: ``[INST] {tiles and global view}{question} [/INST]``.

        ``image``: anything :func:`seedx_lab.anyres.to_pil_rgb` takes (bad input: ``FileNotFoundError`` /
        ``ValueError`` naming it). ``question`` is plain text: special-token text in it (``<img>``,
        ``<patch>``, ``<img_00012>``, ``</s>`` …) and the markers ``[INST]``/``[/INST]`` (this method writes
        the template itself) are refused with a ``ValueError`` naming the token; it may be empty. Decoding
        runs the strict processor, whose budget rule never lets an image block start that
        ``max_new_tokens`` could not finish."""
        ids, feats, pos, cmp = self.comprehension_inputs(image, question, max_new_tokens=max_new_tokens)
        out = self.lvlm.generate(ids, image_features=feats, ids_cmp_mask=cmp, patch_positions=pos,
                                 max_new_tokens=max_new_tokens, processor_mode="strict",
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        return self.decode(out.new_tokens[0])

    def comprehension_inputs(self, image, question: str = DESCRIBE_QUESTION, max_new_tokens=_UNCHECKED):
        """Prompt ids ``[1, T]``, ViT features, positions and ``ids_cmp_mask`` for one image + question.

        Given ``max_new_tokens``, it and the prompt's fit in the context are checked before the ViT runs."""
        question = self._check_user_text(question, "question", allow_empty=True, allow_markers=False)
        tiles = tile_image(image, base=self.config.tile_size, device=self.device, dtype=self.dtype)
        prompt = T.instruction_prompt(" " + question, self.image_prompt(len(tiles)))
        ids = torch.tensor([self.encode_ids(prompt)], device=self.device)
        if max_new_tokens is not _UNCHECKED:
            self.lvlm.check_prompt_fits(ids, max_new_tokens)
        cmp, _ = block_masks(ids, self.token_ids, [[False] * len(tiles)])
        with torch.no_grad():
            feats = self.vit(tiles.pixels)
        return ids, feats, tiles.positions, cmp

    @torch.no_grad()
    def generate(self, prompt: str, images=None, max_new_tokens: int = 200, max_images: int = 4,
                 num_inference_steps: int | None = None, seed: int | None = 0, processor_mode: str = "faithful",
                 **generate_kwargs) -> InterleavedResult:
        """Continue ``prompt`` with text and images; an image starts only where the model predicts ``<img>``.

        ``images``: optional input images, each shown to the model (tiles + global view) before the text:
        a list of anything :func:`seedx_lab.anyres.to_pil_rgb` takes, or one such image (a path, a PIL
        image, or an array / tensor of at most 3 dims; a 4-D array or tensor is a list of CHW/HWC images).
        At most ``max_images`` images are drawn (an int >= 0; 0: text only, ``<img>`` is never started, and a
        prompt ending in ``<img>`` is refused); generation stops after that many blocks. Image ``k`` is
        drawn with seed ``seed + k`` (mod 2**64).

        ``prompt`` is plain text (the ``[INST]``/``[/INST]`` markers are allowed) and may end in ``<img>``:
        the model then draws an image at once (``max_new_tokens`` must then be at least N + 1 to finish it:
        65 for 64 image tokens per block).
        Any other special-token text (``</img>``, ``<patch>``, ``<img_00012>``, a ``<img>`` elsewhere,
        ``</s>`` …) is refused with a ``ValueError`` naming it. It may be empty only when images are given.
        Prompt (image tokens included) plus ``max_new_tokens`` must fit the model's context.
        An image block the budget cuts off is not drawn: in the default ``"faithful"`` mode the processor
        warns when that can happen (it is left in ``output.incomplete_blocks`` and the text keeps its
        ``<img>``); ``processor_mode="strict"`` never starts a block it cannot finish.
        """
        images = _as_image_list(images)
        prompt = self._check_user_text(prompt, "prompt", allow_empty=bool(images), allow_trailing_boi=True)
        max_images = V.integer("max_images", max_images, 0, 1_000_000)
        steps, guidance, seed = self._check_drawing(num_inference_steps, None, seed)
        _check_decoding(processor_mode, generate_kwargs)
        if prompt.rstrip().endswith(T.BOI_TOKEN):
            if max_images == 0:
                raise ValueError(f"the prompt ends in {T.BOI_TOKEN}, which starts an image, but max_images=0 "
                                 "allows none: remove the trailing <img> or allow at least one image")
            prompt = prompt.rstrip()
            need = self.lvlm.num_img_tokens + 1
            if isinstance(max_new_tokens, int) and max_new_tokens < need:
                raise ValueError(f"the prompt ends in {T.BOI_TOKEN}, so the image block needs {need} new tokens "
                                 f"({self.lvlm.num_img_tokens} image tokens and {T.EOI_TOKEN}), but "
                                 f"max_new_tokens={max_new_tokens}")
        feats = pos = cmp = None
        text = prompt
        tiled = [tile_image(im, base=self.config.tile_size, device=self.device, dtype=self.dtype) for im in images]
        if images:
            text = "".join(self.image_prompt(len(t)) for t in tiled) + " " + prompt
        ids = torch.tensor([self.encode_ids(text)], device=self.device)
        self.lvlm.check_prompt_fits(ids, max_new_tokens)          # before any ViT work
        if images:
            feats = torch.cat([self.vit(t.pixels) for t in tiled])
            pos = torch.cat([t.positions for t in tiled])
        if images:
            cmp, _ = block_masks(ids, self.token_ids, [[False] * int(feats.shape[0])])
        out = self.lvlm.generate(ids, image_features=feats, ids_cmp_mask=cmp, patch_positions=pos,
                                 max_new_tokens=max_new_tokens, processor_mode=processor_mode,
                                 eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                 max_blocks=max_images, **generate_kwargs)
        new = out.new_tokens[0].tolist()
        segments, images_out, start = [], [], 0
        for img in out.images[0]:
            a, b = img.block.start - out.prompt_length, img.block.end - out.prompt_length
            if self.decode(new[start:a]):
                segments.append(self.decode(new[start:a]))
            pic = self._draw(img.features, steps, guidance,
                             None if seed is None else (seed + len(images_out)) % (V.SEED_MAX + 1))
            segments.append(pic)
            images_out.append(pic)
            start = b
        if self.decode(new[start:]):
            segments.append(self.decode(new[start:]))
        return InterleavedResult(self.decode(new), images_out, segments, out)

    # ------------------------------------------------------------------ files

    def save(self, directory, extra_files: dict[str, str] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, the tokenizer files and ``extra_files``.

        Atomic as a whole: every file is first written under a temporary name (``<name>.tmp``; the
        tokenizer into a temporary folder) and only once all of them are complete are they renamed over
        the old ones. If writing fails or is interrupted before that, the temporaries are removed and a
        checkpoint already in ``directory`` is left exactly as it was."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        cfg = self.config.to_dict()
        cfg["detok"]["vae"] = dict(cfg["detok"]["vae"], scaling_factor=float(self.detok.vae.config.scaling_factor))
        staged: list[tuple[Path, Path]] = []
        tok_dir = None
        try:
            staged.append(stage_file(directory / "model.safetensors",
                                 lambda p: save_file(state, str(p), metadata={"format": "pt"})))
            staged.append(stage_file(directory / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2))))
            tok_dir = Path(tempfile.mkdtemp(prefix=".tokenizer-", suffix=".tmp", dir=directory))
            T.save_tokenizer(self.tokenizer, tok_dir)
            staged += [(f, directory / f.name) for f in sorted(tok_dir.iterdir()) if f.is_file()]
            for name, text in (extra_files or {}).items():
                staged.append(stage_file(directory / name, lambda p, t=text: p.write_text(t)))
            for tmp, final in staged:                       # everything is complete: commit
                os.replace(tmp, final)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)                 # only those not committed still exist
            if tok_dir is not None:
                shutil.rmtree(tok_dir, ignore_errors=True)
        return directory


def _as_image_list(images) -> list:
    """``generate``'s ``images``: None -> [], one image -> [image], a list / tuple / 4-D batch -> a list."""
    if images is None:
        return []
    if isinstance(images, (str, Path)) or hasattr(images, "getpixel"):       # a path or a PIL image
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return [images] if images.ndim <= 3 else list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    raise ValueError(f"images must be an image or a list of images, got {type(images).__name__}")


def _check_text(text, what: str, allow_empty: bool = False) -> str:
    return V.text(what, text, allow_empty=allow_empty)


def _check_decoding(processor_mode, kwargs: dict) -> None:
    """The LLM's decoding settings of ``generate_image`` / ``generate`` (``do_sample``, ``temperature``,
    ``top_p``, ``max_new_tokens`` elsewhere), checked before any work."""
    V.choice("processor_mode", processor_mode, ("faithful", "strict"))
    if "do_sample" in kwargs:
        V.flag("do_sample", kwargs["do_sample"])
    if "temperature" in kwargs:
        V.number("temperature", kwargs["temperature"], 0.0, 100.0, low_open=True)
    if "top_p" in kwargs:
        V.number("top_p", kwargs["top_p"], 0.0, 1.0, low_open=True)
