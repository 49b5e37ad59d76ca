"""ChameleonTiny: a LLaMA whose vocabulary holds text, ``<img>``, ``</img>`` and the image codes.

Chameleon's design, at seedx-tiny's size: an image is ``<img> c_0 … c_{N-1} </img>`` where ``c_i`` are
the VQ tokenizer's codes (:mod:`seedx_lab.typea.vq`) written as ordinary tokens. The code tokens are the
tokenizer's ``<img_00000>…`` entries, one per codebook entry (``<img_00042>`` is code 42 — in seedx-tiny
the same strings are fixed *positions* of a 64-token block, here they are *values*).

- writing (:meth:`ChameleonTiny.generate_image`, :meth:`~ChameleonTiny.generate`): the LLM predicts
  ``<img>`` itself, then :class:`~seedx_lab.typea.processor.CodebookBlockProcessor` allows only code tokens
  for N steps and forces ``</img>``; the codes are decoded to pixels by the VQ decoder (no diffusion);
- reading (:meth:`~ChameleonTiny.describe`): the image is resized to 64x64 (Chameleon reads fixed-size
  images; no any-res tiles), encoded to codes, and the same code tokens are fed as input.

Decoding is an explicit loop over a KV cache, greedy or sampled (``sample=True``: temperature / top-k,
seeded with a ``torch.Generator``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import tokens as T
from ..files import stage_file
from ..lvlm import LLMConfig, _cache_kw, build_llm
from ..model import DESCRIBE_QUESTION, _check_text
from .processor import CodebookBlockProcessor
from .sequences import encode_pieces, story_pieces
from .vq import VQConfig, VQTokenizer, images_to_unit, unit_to_pil

ARCH = "chameleon-tiny"


@dataclass
class ChameleonConfig:
    """The VQ tokenizer's widths and the LLM's. ``arch`` marks the saved config for :func:`seedx_lab.load`."""

    vq: VQConfig
    llm: LLMConfig
    arch: str = ARCH

    @classmethod
    def tiny(cls, vocab_size: int, grid: int = 4, codebook_size: int | None = None, **vq) -> "ChameleonConfig":
        """seedx-tiny's LLM (``LLMConfig.tiny``) and a VQ tokenizer of ``grid`` x ``grid`` codes (``vq``: other
        :class:`VQConfig` fields, e.g. ``vq_embed_dim``)."""
        return cls(vq=VQConfig.for_grid(grid, codebook_size, **vq), llm=LLMConfig.tiny(vocab_size))

    def to_dict(self) -> dict:
        return dict(arch=self.arch, vq=self.vq.to_dict(), llm=dict(vars(self.llm)))

    @classmethod
    def from_dict(cls, d: dict) -> "ChameleonConfig":
        if not isinstance(d, dict) or d.get("arch") != ARCH:
            raise ValueError(f"not a {ARCH} config (its 'arch' is {d.get('arch') if isinstance(d, dict) else None!r})")
        missing = [k for k in ("vq", "llm") if k not in d]
        if missing:
            raise ValueError(f"config lacks {missing}")
        unknown = sorted(set(d["llm"]) - set(LLMConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown LLMConfig field(s) {unknown}")
        return cls(vq=VQConfig.from_dict(d["vq"]), llm=LLMConfig(**d["llm"]))


def build_tokenizer(codebook_size: int):
    """seedx-tiny's word-level tokenizer with one ``<img_xxxxx>`` token per code."""
    from ..shapeworld import world as W

    return T.build_tokenizer(W.vocabulary(), num_img_tokens=codebook_size)


@dataclass
class TypeAImage:
    """What :meth:`ChameleonTiny.generate_image` returns: the picture, its codes ``[grid, grid]`` and the
    prompt + new token ids ``[T]``."""

    image: object
    prompt: str
    codes: torch.Tensor
    ids: torch.Tensor


@dataclass
class TypeAInterleaved:
    """What :meth:`ChameleonTiny.generate` returns: ``text`` (with ``<img>``/``</img>`` marks), the decoded
    ``images``, ``segments`` (str and PIL images in order) and the new token ids ``[n]``."""

    text: str
    images: list
    segments: list
    new_ids: torch.Tensor
    codes: list = field(default_factory=list)


class ChameleonTiny(nn.Module):
    """VQ tokenizer (``vq``) + LLaMA (``llm``) sharing one vocabulary with the image codes."""

    def __init__(self, config: ChameleonConfig, tokenizer, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        n = config.vq.codebook_size
        self.token_ids = T.ImageTokenIds.from_tokenizer(tokenizer, num_img_tokens=n)
        if len(tokenizer) > config.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LLM vocabulary is {config.llm.vocab_size}")
        self.vq = VQTokenizer(config.vq, device=device, dtype=dtype)
        self.llm = build_llm(config.llm, device, dtype)
        id_to_code = torch.full((config.llm.vocab_size,), -1, dtype=torch.long)
        id_to_code[list(self.token_ids.img)] = torch.arange(n)
        self.register_buffer("code_ids", torch.tensor(self.token_ids.img, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("id_to_code", id_to_code.to(device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def num_codes(self) -> int:
        """Code tokens per image (N = grid * grid)."""
        return self.config.vq.num_codes

    # ------------------------------------------------------------------ ids

    def encode_ids(self, text: str, bos: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.tokenizer.bos_token_id] if bos else []) + ids

    def decode(self, ids, keep_image_tokens: bool = False) -> str:
        """Token ids -> text. Code tokens are dropped unless asked; ``<img>``/``</img>`` stay as marks."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        drop = {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        if not keep_image_tokens:
            drop |= set(self.token_ids.img)
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False).strip()

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, grid, grid]`` -> token ids ``[B, N]`` (raster order)."""
        return self.code_ids[codes.reshape(codes.shape[0], -1).to(self.code_ids.device).long()]

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, N]`` (all code tokens) -> codes ``[B, grid, grid]``; ValueError on any other token."""
        codes = self.id_to_code[ids.to(self.id_to_code.device).long()]
        if ids.shape[-1] != self.num_codes or bool((codes < 0).any()):
            raise ValueError(f"expected {self.num_codes} code tokens per image, got {tuple(ids.shape)} ids "
                             f"of which {int((codes < 0).sum())} are not code tokens")
        g = self.config.vq.grid
        return codes.view(-1, g, g)

    @torch.no_grad()
    def image_codes(self, images) -> torch.Tensor:
        """PIL image(s) or ``[B, 3, 64, 64]`` in [0, 1] -> codes ``[B, grid, grid]``."""
        x = images if isinstance(images, torch.Tensor) and images.dim() == 4 else images_to_unit(images)
        return self.vq.encode(x.to(self.device))

    def processor(self, max_length: int | None = None) -> CodebookBlockProcessor:
        return CodebookBlockProcessor(self.token_ids.boi, self.token_ids.eoi, self.token_ids.img, self.num_codes,
                                      self.config.llm.vocab_size, max_length=max_length,
                                      banned_ids=(self.token_ids.bop, self.token_ids.eop))

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, max_new_tokens: int, sample: bool = False,
                     temperature: float = 1.0, top_k: int | None = None, seed: int | None = 0,
                     stop_after_block: bool = False, max_images: int | None = None,
                     strict_budget: bool = True) -> torch.Tensor:
        """Continue prompts ``[B, T]`` (same length, no padding) by up to ``max_new_tokens``; returns the new
        ids ``[B, n]`` (rows that finished early are padded with ``<pad>``).

        Each step the processor masks the logits (text / codes / ``</img>``, and no ``<img>`` a block could
        not finish within the budget), then the token is the argmax (``sample=False``) or drawn from
        ``softmax(logits / temperature)`` over the ``top_k`` best (``sample=True``, ``seed`` seeds a CPU
        generator). A row stops at ``</s>`` or, when ``stop_after_block``, after its first ``</img>``; once it
        has opened ``max_images`` blocks, ``<img>`` is banned for it. ``strict_budget=False`` lets ``<img>``
        start where the budget cuts the block off (to measure whether the model emits it at all)."""
        from transformers import DynamicCache

        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}")
        if sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        B, T0 = input_ids.shape
        ctx = self.config.llm.max_position_embeddings
        if T0 + max_new_tokens > ctx:
            raise ValueError(f"the prompt is {T0} tokens; with max_new_tokens={max_new_tokens} it needs "
                             f"{T0 + max_new_tokens} positions, more than the model's context of {ctx}")
        proc = self.processor(max_length=T0 + max_new_tokens if strict_budget else None)
        gen = torch.Generator(device="cpu").manual_seed(seed) if (sample and seed is not None) else None
        eos, pad, boi, eoi = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.token_ids.boi, self.token_ids.eoi
        seq = input_ids.to(self.device)
        cache = DynamicCache()
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        opened = torch.zeros(B, dtype=torch.long, device=self.device)
        feed = seq
        for _ in range(max_new_tokens):
            out = self.llm(input_ids=feed, **_cache_kw(self.llm, cache), use_cache=True)
            scores = proc(seq, out.logits[:, -1].float())
            if max_images is not None:
                scores[:, boi] = torch.where(opened >= max_images, float("-inf"), scores[:, boi])
            if sample:
                scores = scores / temperature
                if top_k is not None and top_k < scores.shape[-1]:
                    kth = scores.topk(top_k, dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                probs = scores.softmax(-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(self.device)
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            feed = nxt[:, None]
            opened = opened + (nxt == boi)
            finished = nxt == eos
            if stop_after_block:
                finished = finished | (nxt == eoi)
            done = done | finished
            if bool(done.all()):
                break
        return seq[:, T0:]

    # ------------------------------------------------------------------ tasks

    def _check_user_text(self, text, what: str, allow_empty: bool = False) -> str:
        text = _check_text(text, what, allow_empty=allow_empty)
        tok = self.tokenizer
        found = T.special_token_text(text, [t for t in (tok.bos_token, tok.eos_token, tok.pad_token) if t])
        if found:
            raise ValueError(f"{what} contains special-token text {found[0]!r}: it would be read as an image "
                             "code or control token, not as words; remove it")
        return text

    @torch.no_grad()
    def generate_image(self, caption: str, sample: bool = False, seed: int | None = 0, temperature: float = 1.0,
                       top_k: int | None = None, num_inference_steps=None) -> TypeAImage:
        """Caption -> image: the prompt ends in ``<img>``, the processor makes the next N tokens codes and
        then ``</img>``; the codes ``[grid, grid]`` are decoded by the VQ decoder into a 64x64 PIL image.

        ``sample=False``: greedy codes (the same picture every time); ``sample=True``: codes drawn with
        ``temperature`` / ``top_k``, seeded by ``seed``. ``num_inference_steps`` is accepted and unused (no
        diffusion here), so one evaluator calls both arms alike."""
        caption = self._check_user_text(caption, "caption")
        prompt = T.generation_prompt(caption)
        ids = torch.tensor([self.encode_ids(prompt)], device=self.device)
        new = self.generate_ids(ids, self.num_codes + 1, sample=sample, temperature=temperature, top_k=top_k, seed=seed)
        if new.shape[1] != self.num_codes + 1 or int(new[0, -1]) != self.token_ids.eoi:
            raise RuntimeError("the image block did not complete")      # cannot happen with the processor
        codes = self.ids_to_codes(new[:, : self.num_codes])[0]
        image = unit_to_pil(self.vq.decode(codes[None]))[0]
        return TypeAImage(image, prompt, codes, torch.cat([ids[0], new[0]]))

    @torch.no_grad()
    def describe(self, image, question: str = DESCRIBE_QUESTION, max_new_tokens: int = 24) -> str:
        """Image -> text: ``[INST] <img> codes </img> question [/INST]`` as in training, greedy.

        The image (anything :func:`seedx_lab.images.to_pil_rgb` takes) is stretched to 64x64 and encoded."""
        question = self._check_user_text(question, "question", allow_empty=True)
        codes = self.image_codes(image)[0]
        ids, _ = encode_pieces(self, [("text", "[INST]", False), ("cmp", codes), ("text", " " + question + " [/INST]", False)])
        ids = torch.tensor([ids[:-1]], device=self.device)                     # drop the closing </s>
        return self.decode(self.generate_ids(ids, max_new_tokens)[0])

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 200, max_images: int = 4, sample: bool = False,
                 seed: int | None = 0, temperature: float = 1.0, top_k: int | None = None) -> TypeAInterleaved:
        """Continue ``prompt`` with text and pictures: a picture starts only where the model predicts
        ``<img>``; its codes are decoded to pixels. At most ``max_images`` blocks are opened; a block is
        never started where the budget could not finish it."""
        prompt = self._check_user_text(prompt, "prompt")
        ids = torch.tensor([self.encode_ids(prompt)], device=self.device)
        new = self.generate_ids(ids, max_new_tokens, sample=sample, temperature=temperature, top_k=top_k, seed=seed,
                                max_images=max_images)[0]
        blocks = [b for b in T.find_image_blocks(new, self.token_ids) if b.kind == "img" and b.complete
                  and b.n_tokens == self.num_codes]
        segments, images, codes, start = [], [], [], 0
        for blk in blocks:
            text = self.decode(new[start: blk.start])
            if text:
                segments.append(text)
            c = self.ids_to_codes(new[blk.token_start: blk.token_start + blk.n_tokens][None])
            pic = unit_to_pil(self.vq.decode(c))[0]
            segments.append(pic)
            images.append(pic)
            codes.append(c[0])
            start = blk.end
        if self.decode(new[start:]):
            segments.append(self.decode(new[start:]))
        return TypeAInterleaved(self.decode(new), images, segments, new, codes)

    def story_ids(self, segments, codes=None) -> list[int]:
        """Ids of a world story (text and scenes); pictures' codes from ``codes`` or, if None, from
        rendering and encoding each scene."""
        from ..shapeworld import world as W

        if codes is None:
            scenes = [s for s in segments if not isinstance(s, str)]
            codes = self.image_codes([W.render(s) for s in scenes]) if scenes else []
        return encode_pieces(self, story_pieces(segments, codes))[0]

    # ------------------------------------------------------------------ files

    def save(self, directory, extra_files: dict[str, str] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, the tokenizer files and ``extra_files``, atomically as
        a whole (every file staged under a temporary name, renamed only once all are complete)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        cfg = json.dumps(self.config.to_dict(), indent=2)
        staged: list[tuple[Path, Path]] = []
        tok_dir = None
        try:
            staged.append(stage_file(directory / "model.safetensors",
                                     lambda p: save_file(state, str(p), metadata={"format": "pt"})))
            staged.append(stage_file(directory / "config.json", lambda p: p.write_text(cfg)))
            tok_dir = Path(tempfile.mkdtemp(prefix=".tokenizer-", suffix=".tmp", dir=directory))
            T.save_tokenizer(self.tokenizer, tok_dir)
            staged += [(f, directory / f.name) for f in sorted(tok_dir.iterdir()) if f.is_file()]
            for name, text in (extra_files or {}).items():
                staged.append(stage_file(directory / name, lambda p, t=text: p.write_text(t)))
            for tmp, final in staged:
                os.replace(tmp, final)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            if tok_dir is not None:
                shutil.rmtree(tok_dir, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory, device=None, dtype=None) -> "ChameleonTiny":
        """Load a folder written by :meth:`save` onto ``device`` in ``dtype`` (eval mode)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d} has no {f}")
        try:
            cfg = ChameleonConfig.from_dict(json.loads((d / "config.json").read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise ValueError(f"{d / 'config.json'} is not a valid {ARCH} config: {e}") from None
        except ValueError as e:
            raise ValueError(f"{d / 'config.json'}: {e}") from None
        tok = T.load_tokenizer(d, num_img_tokens=cfg.vq.codebook_size)
        model = cls(cfg, tok)
        try:
            state = load_file(str(d / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{d / 'model.safetensors'} could not be read (truncated or corrupt?): {e}") from None
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad = [k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(f"{d / 'model.safetensors'} does not fit {d / 'config.json'}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, shape mismatch {sorted(bad)[:5]}")
        model.load_state_dict(state)
        return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
