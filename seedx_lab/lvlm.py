"""ContinuousLVLM: a LLaMA language model that reads and writes images as N-token blocks (64 published).

N (``num_img_tokens``) is the input resampler's query count; the text below says 64, the published N.
With another N (a square, ``SeedXConfig.num_img_tokens``) only the LLM's side changes: the output
resampler maps the N hidden states to the same 64 features, regressed onto the same 64-pooled target.

Reading (comprehension). Each image view's 256 ViT features go through the *input resampler*
(256 -> 64 queries, ViT width -> LLM width), get the tile-position embedding
``([x, y, 1-x, 1-y] / 2) @ patch_pos_embed`` and are written over the token embeddings of that
view's ``<img_00000>…<img_00063>`` positions (``ids_cmp_mask``).

Writing (generation). The 64 image tokens of an image to be generated keep their own token
embeddings: they are the LLM's learnable queries. The last-layer hidden states at those 64
positions (``ids_gen_mask``) go through the *output resampler* (LLM width -> ViT width, 64 -> 64)
and are regressed onto the target image's 256 ViT features pooled to 64 — as published, by 1-D
average pooling over runs of 4 consecutive tokens in raster order (``target_pool="1d"``);
``"2d"`` pools 2x2 spatial cells instead, for the lesson that compares the two.

Losses: ``lm_loss`` is next-token cross-entropy on the labels (text and the ``<img>`` of every
generated block; image-token positions carry no label, see :func:`seedx_lab.sequences.make_labels`);
``rec_loss`` is MSE (``mse=True``, published) or cosine; ``total = lm_loss_scale * lm_loss +
rec_loss_scale * rec_loss``.

:meth:`ContinuousLVLM.generate` is an explicit decoding loop over a KV cache that calls the
logits processor(s) at every step and keeps the last-layer hidden state of every new position.
Unlike the published ``generate`` (which passes temperature/top_p but hard-codes greedy
decoding) sampling is a real option here (``do_sample=True``). With ``fast_forced_block=True``
a forced block is appended in one forward pass instead of 65 steps (see :meth:`generate`).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .posemb import square_side
from .resampler import Resampler, ResamplerConfig
from .tokens import ImageBlock, ImageTokenIds, find_image_blocks


@dataclass
class LLMConfig:
    """LLaMA widths. ``tiny()`` is seedx-tiny; ``published()`` is the LLaMA-2-13B layout SEED-X widens."""

    vocab_size: int = 32000
    hidden_size: int = 5120
    intermediate_size: int = 13824
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @classmethod
    def published(cls, vocab_size: int = 32330) -> "LLMConfig":
        return cls(vocab_size=vocab_size)

    @classmethod
    def tiny(cls, vocab_size: int) -> "LLMConfig":
        return cls(vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-6)

    def to_llama(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                           num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
                           max_position_embeddings=self.max_position_embeddings, rms_norm_eps=self.rms_norm_eps,
                           rope_theta=self.rope_theta, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_llm(config: LLMConfig, device=None, dtype=None):
    """A randomly initialised ``LlamaForCausalLM`` (``device="meta"`` allocates nothing)."""
    from transformers import LlamaForCausalLM

    with torch.device(device or "cpu"):
        llm = LlamaForCausalLM(config.to_llama())
    return llm.to(dtype=dtype) if dtype is not None else llm


def pool_targets(features: torch.Tensor, mode: str = "1d", n_out: int = 64) -> torch.Tensor:
    """Pool ViT features ``[N, 256, D]`` to the regression target ``[N, n_out, D]``.

    ``"1d"`` (published): average of each run of ``256 / n_out`` consecutive tokens in raster order —
    for a 16x16 grid and 64 outputs that mixes 4 horizontally adjacent cells (a 1x4 strip).
    ``"2d"``: average of square ``k x k`` cells of the grid (2x2 for 256 -> 64).
    """
    if features.dim() != 3:
        raise ValueError(f"target features must be [N, tokens, dim], got shape {tuple(features.shape)}")
    n, t, d = features.shape
    if t % n_out:
        raise ValueError(f"cannot pool {t} tokens to {n_out}: not a multiple")
    if mode == "1d":
        return F.avg_pool1d(features.transpose(1, 2), kernel_size=t // n_out).transpose(1, 2)
    if mode == "2d":
        side, out_side = int(round(t ** 0.5)), int(round(n_out ** 0.5))
        if side * side != t or out_side * out_side != n_out or side % out_side:
            raise ValueError(f"2-D pooling needs square grids, got {t} -> {n_out} tokens")
        grid = features.transpose(1, 2).reshape(n, d, side, side)
        return F.avg_pool2d(grid, side // out_side).reshape(n, d, n_out).transpose(1, 2)
    raise ValueError(f"target_pool must be '1d' or '2d', got {mode!r}")


def cosine_loss(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos(rec_i, target_i)`` over tokens."""
    return (1 - F.cosine_similarity(rec, target, dim=-1)).mean()


@dataclass
class GeneratedImage:
    """One image block completed during generation.

    ``hidden``: last-layer hidden states at its 64 image-token positions ``[64, llm_dim]``;
    ``features``: their output-resampled features ``[64, vit_dim]`` (what the de-tokenizer reads).
    """

    row: int
    block: ImageBlock            # in coordinates of the full sequence (prompt + new tokens)
    hidden: torch.Tensor
    features: torch.Tensor


@dataclass
class GenerateOutput:
    sequences: torch.Tensor                  # [B, T_prompt + n_new] (finished rows padded)
    prompt_length: int
    hidden: torch.Tensor                     # [B, n_fed, llm_dim] last-layer state at each new position fed
    images: list[list[GeneratedImage]]
    incomplete_blocks: list[list[ImageBlock]] = field(default_factory=list)   # cut by max_new_tokens

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]


@dataclass
class _Decoding:
    """What :meth:`ContinuousLVLM.generate` carries from one step to the next (B rows)."""

    cache: object                            # the LLM's KV cache
    mask: torch.Tensor                       # [B, positions so far] 1 = real token
    logits: torch.Tensor                     # [B, V] float, predicting each row's next token
    next_pos: torch.Tensor                   # [B] position id of each row's next token
    seq: torch.Tensor                        # [B, T + slots fed] with padding slots of ragged chunks
    rows: list                               # per row: its real tokens so far (prompt padding included)
    count: list                              # per row: new tokens so far
    done: list                               # per row: finished
    n_prompt_boi: list                       # per row: <img> already in the prompt
    pad_token_id: int = 0
    pending: list = field(default_factory=list)       # per row: a forced block still to feed
    fed_hidden: list = field(default_factory=list)    # [B, L, llm_dim] per fed chunk
    fed_valid: list = field(default_factory=list)     # [B, L] bool per fed chunk
    ragged: bool = False                     # seq holds padding slots


def sampling_warpers(temperature: float = 1.0, top_p: float = 1.0):
    """transformers' ``LogitsProcessorList`` that :meth:`ContinuousLVLM.generate` samples through
    (``do_sample=True``): ``TemperatureLogitsWarper`` (scores / temperature) unless the temperature is 1,
    then ``TopPLogitsWarper`` (keep the smallest set of tokens whose probability reaches ``top_p``)
    unless ``top_p`` is 1. Scores ``[B, V]`` in, scores ``[B, V]`` out (dropped tokens at -inf)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be a number in [0, 1], got {top_p!r}")
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(temperature)))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(top_p)))
    return warpers


class ContinuousLVLM(nn.Module):
    """LLM + input resampler + output resampler (+ the tile-position matrix ``patch_pos_embed``)."""

    def __init__(self, llm, input_resampler: Resampler, output_resampler: Resampler, token_ids: ImageTokenIds,
                 lm_loss_scale: float = 1.0, rec_loss_scale: float = 6.0, add_patch_pos: bool = True,
                 vit_down: bool = True, mse: bool = True, target_pool: str = "1d", device=None, dtype=None):
        super().__init__()
        self.llm = llm
        self.input_resampler = input_resampler
        self.output_resampler = output_resampler
        self.token_ids = token_ids
        self.lm_loss_scale, self.rec_loss_scale = lm_loss_scale, rec_loss_scale
        self.add_patch_pos, self.vit_down, self.mse = add_patch_pos, vit_down, mse
        if target_pool not in ("1d", "2d"):
            raise ValueError(f"target_pool must be '1d' or '2d', got {target_pool!r}")
        self.target_pool = target_pool
        # told about every generate call (an active seedx_lab.trace registers here); see generate
        self.generation_observers: list = []
        dim = input_resampler.config.embed_dim
        if add_patch_pos:
            self.patch_pos_embed = nn.Parameter(torch.randn(4, dim, device=device, dtype=dtype) * dim ** -0.5)

    @property
    def num_img_tokens(self) -> int:
        """N, the image tokens per block: the input resampler's queries (64 published)."""
        return self.input_resampler.config.num_queries

    @property
    def num_out_features(self) -> int:
        """The output resampler's queries: the features per image it hands the de-tokenizer (64), whatever N."""
        return self.output_resampler.config.num_queries

    # ------------------------------------------------------------------ embeddings

    def image_embeddings(self, image_features: torch.Tensor, patch_positions: torch.Tensor | None = None):
        """ViT features ``[N, 256, vit_dim]`` (+ positions ``[N, 2]``) -> LLM inputs ``[N, 64, llm_dim]``."""
        x = self.input_resampler(image_features)
        if self.add_patch_pos and patch_positions is not None:
            if patch_positions.shape != (x.shape[0], 2):
                raise ValueError(f"patch_positions must be [{x.shape[0]}, 2], got {tuple(patch_positions.shape)}")
            p = patch_positions.to(x)
            x = x + (torch.cat([p, 1 - p], dim=-1) / 2 @ self.patch_pos_embed).unsqueeze(1)
        return x

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None,
              ids_cmp_mask: torch.Tensor | None = None, patch_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``[B, T, D]`` with comprehension image embeddings written in at ``ids_cmp_mask``."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if image_features is None:
            return embeds
        if ids_cmp_mask is None:
            raise ValueError("image_features were given without ids_cmp_mask (where to write them)")
        img = self.image_embeddings(image_features, patch_positions)           # [N, 64, D]
        n_slots = int(ids_cmp_mask.sum())
        if n_slots != img.shape[0] * img.shape[1]:
            raise ValueError(f"ids_cmp_mask marks {n_slots} positions but {img.shape[0]} views x "
                             f"{img.shape[1]} tokens = {img.shape[0] * img.shape[1]} embeddings were given")
        embeds = embeds.clone()
        embeds[ids_cmp_mask] = img.reshape(-1, img.shape[-1]).to(embeds.dtype)
        return embeds

    # ------------------------------------------------------------------ training forward

    def forward(self, input_ids, attention_mask=None, labels=None, image_features=None, ids_cmp_mask=None,
                patch_positions=None, target_features=None, ids_gen_mask=None, output_hidden_states=False):
        """Losses of one batch. ``target_features [N_gen, 256, vit_dim]`` are the ViT features of the images
        to generate, in the order of the generated blocks (row-major); ``ids_gen_mask`` marks their tokens.

        Returns a dict: ``loss`` (total), ``lm_loss``, ``rec_loss``, ``logits``, and ``hidden_states``
        (all layers) when asked; ``rec`` and ``target`` ``[N_gen, 64, vit_dim]`` when there are targets.
        """
        embeds = self.embed(input_ids, image_features, ids_cmp_mask, patch_positions)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        logits = out.logits
        result = {"logits": logits}
        if labels is not None:
            lm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                      labels[:, 1:].reshape(-1), ignore_index=-100)
        else:
            lm_loss = logits.new_zeros(())
        rec_loss = logits.new_zeros(())
        if target_features is not None and target_features.shape[0] > 0:
            if ids_gen_mask is None:
                raise ValueError("target_features were given without ids_gen_mask")
            last = out.hidden_states[-1]
            n = target_features.shape[0]
            if int(ids_gen_mask.sum()) != n * self.num_img_tokens:
                raise ValueError(f"ids_gen_mask marks {int(ids_gen_mask.sum())} positions, expected "
                                 f"{n} images x {self.num_img_tokens} tokens")
            gen_hidden = last[ids_gen_mask].view(n, self.num_img_tokens, -1)      # [N_gen, N, D]
            rec = self.output_resampler(gen_hidden)                                # [N_gen, 64, vit_dim]
            target = target_features
            if self.vit_down:
                # the target is what the de-tokenizer was trained to read: the 256 ViT features pooled to the
                # output resampler's 64, whatever the block length N (N only narrows the LLM's side)
                target = pool_targets(target_features, self.target_pool, self.num_out_features)
            target = target.detach().to(rec.dtype)
            rec_loss = F.mse_loss(rec, target) if self.mse else cosine_loss(rec, target)
            result.update(rec=rec, target=target)
        result.update(loss=self.lm_loss_scale * lm_loss + self.rec_loss_scale * rec_loss,
                      lm_loss=lm_loss, rec_loss=rec_loss)
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        return result

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 image_features=None, ids_cmp_mask=None, patch_positions=None, max_new_tokens: int = 120,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, logits_processor=None, processor_mode: str = "faithful",
                 eos_token_id: int | None = None, pad_token_id: int = 0,
                 fast_forced_block: bool = True, max_blocks: int | None = None) -> GenerateOutput:
        """Decode up to ``max_new_tokens`` tokens for each row of a (left-padded) batch ``input_ids [B, T]``.

        ``logits_processor``: a list of processors, or None for one
        ``AutoImageTokenGenerationProcessor(mode=processor_mode)``. ``do_sample=False`` is greedy
        (published behaviour); ``do_sample=True`` samples after transformers' ``TemperatureLogitsWarper``
        and ``TopPLogitsWarper`` (:func:`sampling_warpers`).

        ``fast_forced_block``: when a row has just produced ``<img>`` (or its prompt ends in it), the
        whole block ``<img_00000>…<img_00063></img>`` is known in advance, so it is fed in one forward
        pass over the KV cache instead of 65 decoding steps; when every prompt of the batch ends in
        ``<img>``, the block rides in the prompt's own pass (one LLM call for caption → image). Rows that
        are not in a block feed their one token in the same pass, padded and masked. The processors are
        not asked about the forced tokens on this path, but recording ones (``record=True``, or a trace
        capturing ``processor.decisions``) are shown the logits that predicted each forced token and log
        the same decisions as on the step-by-step path (:meth:`_record_forced`).
        ``max_blocks``: once a row has opened that many image blocks, ``<img>`` is banned for it.

        One step of the loop: :meth:`_choose_next` picks a token per row from the last logits,
        :meth:`_next_chunks` turns it into what each row feeds (one token, or ``<img>`` with its forced
        block), :meth:`_feed` runs those chunks through the LLM over the KV cache; :meth:`_prefill` is the
        prompt's pass and :meth:`_collect` assembles the output. Observers in
        ``self.generation_observers`` (e.g. a :func:`seedx_lab.trace`) get ``on_generate(processors)``
        before decoding starts.
        """
        from .generation import AutoImageTokenGenerationProcessor

        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        mask = attention_mask.to(device=input_ids.device, dtype=torch.long) if attention_mask is not None \
            else torch.ones_like(input_ids)
        self.check_prompt_fits(input_ids, max_new_tokens, mask)
        warpers = sampling_warpers(temperature, top_p) if do_sample else None
        if logits_processor is None:
            logits_processor = [AutoImageTokenGenerationProcessor(token_ids=self.token_ids,
                                                                  num_img_gen_tokens=self.num_img_tokens,
                                                                  mode=processor_mode, max_length=T + max_new_tokens)]
        else:
            for p in logits_processor:
                if getattr(p, "max_length", "absent") is None:
                    p.max_length = T + max_new_tokens
        for obs in list(getattr(self, "generation_observers", ())):
            obs.on_generate(logits_processor)
        # sampling inside a faithful block may leave it, so that path decodes the block step by step
        forced_ok = fast_forced_block and (not do_sample or processor_mode == "strict")
        recorders = [p for p in logits_processor if getattr(p, "record", False) and hasattr(p, "record_forced")]
        s = self._prefill(input_ids, mask, image_features, ids_cmp_mask, patch_positions, max_new_tokens,
                          forced_ok, recorders, max_blocks, pad_token_id)
        while not all(s.done):
            chosen = self._choose_next(s, logits_processor, warpers, generator, max_blocks)
            chunks = self._next_chunks(s, chosen, forced_ok, max_new_tokens)
            self._feed(s, chunks, recorders, max_blocks, max_new_tokens, eos_token_id, pad_token_id)
        return self._collect(s.seq, T, s.fed_hidden, s.fed_valid, pad_token_id)

    def _prefill(self, input_ids, mask, image_features, ids_cmp_mask, patch_positions, max_new_tokens: int,
                 forced_ok: bool, recorders, max_blocks, pad_token_id: int = 0) -> _Decoding:
        """The prompt's pass over ``input_ids [B, T]`` (``mask [B, T]``), filling a fresh KV cache.

        When every row ends in ``<img>`` (and forced blocks are allowed) the block ``[L0]`` (64 image
        tokens and ``</img>``, cut to ``max_new_tokens``) rides in the same pass; its hidden states
        ``[B, L0, llm_dim]`` are the first fed chunk. Rows ending in ``<img>`` in a mixed batch get
        their block as the first chunk instead (``pending``). Returns the decoding state, with the
        logits ``[B, V]`` that predict each row's next token."""
        from transformers import DynamicCache

        B, T = input_ids.shape
        device = input_ids.device
        block = self.token_ids.generation_block()                                  # 64 img ids + </img>
        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        merged = block[:max_new_tokens] if (forced_ok and bool((input_ids[:, -1] == self.token_ids.boi).all())
                                            and bool(mask[:, -1].all())) else []
        L0 = len(merged)
        first = torch.tensor(merged, dtype=torch.long, device=device).view(1, L0).expand(B, L0)   # [B, L0]
        if merged:
            if ids_cmp_mask is not None:
                ids_cmp_mask = torch.cat([ids_cmp_mask.to(device), torch.zeros_like(first, dtype=torch.bool)], dim=1)
            mask = torch.cat([mask, torch.ones_like(first)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(L0, device=device)], dim=1)
        embeds = self.embed(torch.cat([input_ids, first], dim=1), image_features, ids_cmp_mask, patch_positions)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **_cache_kw(self.llm, cache),
                       use_cache=True, output_hidden_states=True)
        rows = [r.tolist() for r in input_ids]
        s = _Decoding(cache=cache, mask=mask, logits=out.logits[:, -1].float(), next_pos=positions[:, -1] + 1,
                      seq=torch.cat([input_ids, first], dim=1), rows=rows, pad_token_id=pad_token_id, count=[0] * B, done=[False] * B,
                      n_prompt_boi=[r.count(self.token_ids.boi) for r in rows])
        if merged:
            s.fed_hidden.append(out.hidden_states[-1][:, T:])
            s.fed_valid.append(torch.ones((B, L0), dtype=torch.bool, device=device))
            for b in range(B):       # token j of the block was predicted by the logits at T - 1 + j
                self._record_forced(recorders, s.rows[b], merged, out.logits[b, T - 1: T - 1 + L0], b, 0,
                                    capped=max_blocks is not None and max_blocks <= 0)
                s.rows[b].extend(merged)
                s.count[b] = L0
                s.done[b] = s.count[b] >= max_new_tokens
        s.pending = [list(block) if forced_ok and not merged and int(input_ids[b, -1]) == self.token_ids.boi else []
                     for b in range(B)]
        return s

    def _choose_next(self, s: _Decoding, processors, warpers, generator, max_blocks) -> list[int]:
        """One token id per row (``B``) from the last logits ``s.logits [B, V]``: ``<img>`` is banned for
        rows that used up ``max_blocks``, the processors see the sequence so far ``[B, T + n]`` (real
        tokens, left-padded), then greedy argmax, or (``warpers`` given) a draw from the softmax of the
        warped scores."""
        device = s.logits.device
        logits = s.logits
        view = s.seq if not s.ragged else _left_pad(s.rows, s.pad_token_id, device)              # what processors read
        if max_blocks is not None:
            capped = torch.tensor([r.count(self.token_ids.boi) - s.n_prompt_boi[b] >= max_blocks
                                   for b, r in enumerate(s.rows)], device=device)
            logits[capped, self.token_ids.boi] = float("-inf")
        scores = logits
        for p in processors:         # called from here so their warnings point into seedx_lab
            scores = p(view, scores)
        if warpers is None:
            return scores.argmax(-1).tolist()
        probs = warpers(view, scores).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()

    def _next_chunks(self, s: _Decoding, chosen: list[int], forced_ok: bool, max_new_tokens: int) -> list[list[int]]:
        """What each row feeds next: nothing once done, a pending forced block, ``<img>`` followed by its
        forced block ``[65]`` (fast path), or the chosen token alone; never past ``max_new_tokens``."""
        block = self.token_ids.generation_block()
        chunks = []
        for b, tok in enumerate(chosen):
            if s.done[b]:
                c = []
            elif s.pending[b]:
                c = s.pending[b]
            elif forced_ok and tok == self.token_ids.boi:
                c = [tok] + list(block)
            else:
                c = [tok]
            chunks.append(c[: max_new_tokens - s.count[b]])
        s.pending = [[] for _ in chosen]
        return chunks

    def _feed(self, s: _Decoding, chunks: list[list[int]], recorders, max_blocks, max_new_tokens: int,
              eos_token_id, pad_token_id: int) -> None:
        """One LLM pass over the KV cache with the chunks right-padded to ``[B, L]`` (padding masked).
        Keeps the last-layer hidden states ``[B, L, llm_dim]`` and which slots are real ``[B, L]``, and
        leaves in ``s.logits [B, V]`` the logits after each row's last real token."""
        B = len(chunks)
        device = s.logits.device
        L = max(len(c) for c in chunks)
        ids = torch.full((B, L), pad_token_id, dtype=torch.long, device=device)
        valid = torch.zeros((B, L), dtype=torch.bool, device=device)
        for b, c in enumerate(chunks):
            if c:
                ids[b, : len(c)] = torch.tensor(c, device=device)
                valid[b, : len(c)] = True
        pos = s.next_pos[:, None] + (valid.long().cumsum(-1) - 1).clamp(min=0)
        s.mask = torch.cat([s.mask, valid.long()], dim=1)
        out = self.llm(inputs_embeds=self.llm.get_input_embeddings()(ids), attention_mask=s.mask, position_ids=pos,
                       **_cache_kw(self.llm, s.cache), use_cache=True, output_hidden_states=True)
        last_idx = torch.tensor([max(len(c) - 1, 0) for c in chunks], device=device)
        s.logits = out.logits[torch.arange(B, device=device), last_idx].float()
        s.next_pos = s.next_pos + valid.long().sum(-1)
        s.fed_hidden.append(out.hidden_states[-1])
        s.fed_valid.append(valid)
        s.seq = torch.cat([s.seq, ids], dim=1)
        s.ragged = s.ragged or any(len(c) != L for c in chunks)
        for b, c in enumerate(chunks):
            if len(c) > 1:       # c[0] was chosen by the processors; c[1:] were fed unasked
                opened = (s.rows[b] + c).count(self.token_ids.boi) - s.n_prompt_boi[b]
                self._record_forced(recorders, s.rows[b] + c[:1], c[1:], out.logits[b, : len(c) - 1], b,
                                    s.count[b] + 1, capped=max_blocks is not None and opened >= max_blocks)
            s.rows[b].extend(c)
            s.count[b] += len(c)
            if s.count[b] >= max_new_tokens or (eos_token_id is not None and eos_token_id in c):
                s.done[b] = True

    def _record_forced(self, recorders, before: list[int], forced: list[int], logits: torch.Tensor, row: int,
                       first_step: int, capped: bool = False) -> None:
        """Let recording processors log the decisions for ``forced`` tokens fed in one pass: token j
        followed ``before + forced[:j]`` and was predicted by ``logits[j]`` (``[len(forced), V]``).
        ``capped``: the row has used up ``max_blocks``, so ``<img>`` is banned (-inf) as in the loop."""
        if not recorders or not forced:
            return
        logits = logits.float()
        if capped:
            logits = logits.clone()
            logits[:, self.token_ids.boi] = float("-inf")
        W = self.num_img_tokens + 1                              # the longest tail a processor reads
        seqs = [(before + forced[:j])[-W:] for j in range(len(forced))]
        tails = torch.full((len(forced), W), -1, dtype=torch.long, device=logits.device)
        for j, t in enumerate(seqs):
            tails[j, W - len(t):] = torch.tensor(t, device=logits.device)
        for p in recorders:
            p.record_forced(tails, logits, row, first_step)

    def check_prompt_fits(self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask=None) -> None:
        """``ValueError`` unless ``max_new_tokens`` is an int >= 1 and the prompt ``[B, T]`` (image tokens
        included, padding not) plus ``max_new_tokens`` fits the LLM's ``max_position_embeddings``; the
        message gives both numbers. :meth:`generate` calls it first; callers may call it before costly
        work (e.g. running the ViT)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device).long()
        ctx = getattr(self.llm.config, "max_position_embeddings", None)
        if not ctx:
            return
        lengths = mask.sum(-1)                                                     # real tokens per row
        b = int(lengths.argmax())
        n = int(lengths[b])
        if n + max_new_tokens <= ctx:
            return
        t = self.token_ids
        block_ids = torch.tensor([t.boi, t.eoi, t.bop, t.eop, *t.img], device=input_ids.device)
        n_img = int((torch.isin(input_ids[b], block_ids) & mask[b].bool()).sum())
        what = f"the prompt is {n} tokens long ({n_img} of them in image blocks, {n - n_img} text)"
        if n > ctx:
            raise ValueError(f"{what}, longer than the model's context of {ctx} positions "
                             "(max_position_embeddings); shorten the text or pass fewer / smaller images")
        raise ValueError(f"{what}; with max_new_tokens={max_new_tokens} it needs {n + max_new_tokens} positions, "
                         f"more than the model's context of {ctx} (max_position_embeddings); lower max_new_tokens "
                         f"to at most {ctx - n} or shorten the prompt")

    def _collect(self, seq, T, fed_hidden, fed_valid, pad_token_id) -> GenerateOutput:
        """Assemble the output from ``seq [B, T + slots]`` and the fed chunks' hidden states / validity:
        each row's new tokens without padding slots (right-padded to ``[B, n]``), their hidden states
        ``[B, n, llm_dim]``, and every generated image block completed to 64 tokens with its
        output-resampled features ``[64, vit_dim]`` (cut blocks go to ``incomplete_blocks``)."""
        B = seq.shape[0]
        dim = self.llm.config.hidden_size
        if fed_hidden:
            hid, val = torch.cat(fed_hidden, 1), torch.cat(fed_valid, 1)
        else:
            hid = seq.new_zeros((B, 0, dim), dtype=torch.float)
            val = torch.zeros((B, 0), dtype=torch.bool, device=seq.device)
        # compact each row: drop padding slots, keep the order of real tokens
        rows_ids, rows_hid = [], []
        for b in range(B):
            keep = val[b]
            rows_ids.append(seq[b, T:][keep])
            rows_hid.append(hid[b][keep])
        n = max((len(r) for r in rows_ids), default=0)
        new = torch.full((B, n), pad_token_id, dtype=seq.dtype, device=seq.device)
        hidden = hid.new_zeros((B, n, dim))
        for b in range(B):
            new[b, : len(rows_ids[b])] = rows_ids[b]
            hidden[b, : len(rows_hid[b])] = rows_hid[b]
        sequences = torch.cat([seq[:, :T], new], dim=1)
        images, cut = [], []
        for b in range(B):
            row_imgs, row_cut = [], []
            for blk in find_image_blocks(sequences[b, : T + len(rows_ids[b])], self.token_ids):
                if blk.kind != "img" or blk.end <= T:
                    continue                       # comprehension blocks of the prompt
                if blk.complete and blk.n_tokens == self.num_img_tokens:
                    h = hidden[b, blk.token_start - T: blk.token_start - T + blk.n_tokens]
                    if h.shape[0] == blk.n_tokens:
                        feats = self.output_resampler(h[None].to(self.output_resampler.query.dtype))[0]
                        row_imgs.append(GeneratedImage(b, blk, h, feats))
                        continue
                row_cut.append(blk)
            images.append(row_imgs)
            cut.append(row_cut)
        return GenerateOutput(sequences, T, hidden, images, cut)


def _cache_kw(llm, cache) -> dict:
    """transformers 5.2x names the KV cache argument ``cache`` (``past_key_values`` is deprecated)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
    return {name: cache}


def _left_pad(rows: list[list[int]], pad: int, device) -> torch.Tensor:
    n = max(len(r) for r in rows)
    return torch.tensor([[pad] * (n - len(r)) + r for r in rows], dtype=torch.long, device=device)


def build_lvlm(llm_config: LLMConfig, vit_dim: int, token_ids: ImageTokenIds, resampler_heads: int | None = None,
               device=None, dtype=None, input_locality: float = 0.0, input_local_heads: int | None = None,
               num_out_features: int = 64, **kwargs) -> ContinuousLVLM:
    """Assemble a randomly initialised ContinuousLVLM for an LLM config and a ViT output width.

    The block length N is ``token_ids.num_img_tokens`` (a square number): the input resampler has N queries
    (256 -> N), the output resampler ``num_out_features`` queries over the N hidden states (N -> 64 for the
    de-tokenizer). ``input_locality`` / ``input_local_heads``: the input resampler's place bias."""
    d = llm_config.hidden_size
    heads = resampler_heads or max(1, d // 128)
    side_in = square_side(token_ids.num_img_tokens, "image tokens per block")
    side_out = square_side(num_out_features, "num_out_features")
    rin = Resampler(ResamplerConfig(grid_size=side_in, embed_dim=d, num_heads=heads, kv_dim=vit_dim,
                                    locality=input_locality, local_heads=input_local_heads), device=device, dtype=dtype)
    rout = Resampler(ResamplerConfig(grid_size=side_out, embed_dim=vit_dim, num_heads=heads, kv_dim=d),
                     device=device, dtype=dtype)
    return ContinuousLVLM(build_llm(llm_config, device, dtype), rin, rout, token_ids, device=device, dtype=dtype, **kwargs)
