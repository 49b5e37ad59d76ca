"""The twelve claims of the seed analysis (``CLAIMS.md``), each measured on a model.

Every ``claimN(model, ...)`` runs a small measurement and returns a :class:`ClaimResult`: what the
seed analysis says, what the published code does, the measured values (a rate as a :class:`Rate`
with its n and a 95 % Wilson interval), a verdict computed from those values, and a one-line
``evidence`` string built from the same numbers. Nothing here knows what a run "should" give: the
verdict rules are written as functions of the measurements, so a model that behaves differently
(a suppressed ``<img>`` logit, a ``-inf`` processor, a 2-D target pool, sampling switched on) gets
a different verdict. :func:`ledger` runs all twelve.

Verdicts: ``holds``; ``holds with caveat`` (true as stated, but the measurement shows a limit the
claim leaves out); ``fails`` (the measurement contradicts the claim); ``unlike published`` (this build
does not do what the published code does, so the row says nothing about SEED-X); ``not measured``
(the measurement raised; the error is the evidence).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

HOLDS, CAVEAT, FAILS, UNLIKE, NOT_MEASURED = "holds", "holds with caveat", "fails", "unlike published", "not measured"
VERDICTS = (HOLDS, CAVEAT, FAILS, UNLIKE, NOT_MEASURED)

__all__ = ["Rate", "ClaimResult", "Ledger", "ledger", "CLAIMS", "VERDICTS"] + [f"claim{i}" for i in range(1, 13)]


# --------------------------------------------------------------------------- results

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of k successes in n trials (``(0, 1)`` when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of ``k1/n1 - k2/n2`` from the two Wilson intervals (Newcombe's hybrid score method).

    Made for independent rates; for two rates measured on the same items and positively correlated it is
    wider than it needs to be, so a difference it finds is there."""
    if n1 < 1 or n2 < 1:
        raise ValueError(f"newcombe needs n1, n2 >= 1, got n1={n1}, n2={n2}")
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1, z), wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n``, with its 95 % Wilson interval ``(lo, hi)``."""

    k: int
    n: int

    def __post_init__(self):
        if not 0 <= self.k <= self.n:
            raise ValueError(f"a rate needs 0 <= k <= n, got k={self.k}, n={self.n}")

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def lo(self) -> float:
        return wilson(self.k, self.n)[0]

    @property
    def hi(self) -> float:
        return wilson(self.k, self.n)[1]

    def __str__(self) -> str:
        return f"{self.k}/{self.n} [{self.lo:.2f}, {self.hi:.2f}]"


@dataclass
class ClaimResult:
    """One claim measured on one model. ``measured`` maps names to numbers, bools or :class:`Rate`."""

    id: int
    claim: str
    seed_says: str
    published_code: str
    measured: dict
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def row(self) -> dict:
        return dict(id=self.id, claim=self.claim, seed_says=self.seed_says, published_code=self.published_code,
                    measured=self.evidence, verdict=self.verdict)


@dataclass
class Ledger:
    """The results of :func:`ledger`, one row per claim; ``str()`` is the printed table."""

    results: list[ClaimResult]
    model_name: str = ""
    settings: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.results) for v in VERDICTS}

    def summary(self) -> str:
        """``claims=12 measured=12 holds=… holds_with_caveat=… fails=… unlike_published=… not_measured=…``."""
        c = self.counts()
        measured = len(self.results) - c[NOT_MEASURED]
        parts = [f"claims={len(self.results)}", f"measured={measured}"]
        parts += [f"{v.replace(' ', '_')}={c[v]}" for v in VERDICTS]
        return " ".join(parts)

    def __getitem__(self, claim_id: int) -> ClaimResult:
        for r in self.results:
            if r.id == claim_id:
                return r
        raise KeyError(f"no claim #{claim_id} in this ledger")

    def __str__(self) -> str:
        import textwrap

        lines = []
        if self.model_name:
            lines.append(f"model: {self.model_name}  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        for r in self.results:
            lines.append(f"#{r.id:<2} {r.claim}")
            for label, text in (("seed says", r.seed_says), ("published", r.published_code),
                                ("measured", r.evidence), ("verdict", r.verdict)):
                lines.append(textwrap.fill(text, 108, initial_indent=f"    {label:<10} ", subsequent_indent=" " * 15))
            if isinstance(r.measured.get("table"), dict):
                lines += ["    " + line for line in step_table(r.measured["table"]).splitlines()]
        lines.append(self.summary())
        return "\n".join(lines)

    def plot(self):
        """A table figure (claim, verdict, evidence), one row per claim; returns the Figure."""
        from matplotlib.figure import Figure

        colours = {HOLDS: "#c8e6c9", CAVEAT: "#fff3c4", FAILS: "#ffcdd2", UNLIKE: "#d1c4e9", NOT_MEASURED: "#e0e0e0"}
        fig = Figure(figsize=(14, 0.42 * len(self.results) + 0.8), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        cells = [[f"#{r.id}", r.claim[:48], r.verdict, r.evidence[:95]] for r in self.results]
        table = ax.table(cells, colLabels=["#", "claim", "verdict", "measured"], loc="center", cellLoc="left",
                         colWidths=[0.03, 0.27, 0.1, 0.6])
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        for i, r in enumerate(self.results, start=1):
            table[i, 2].set_facecolor(colours[r.verdict])
        ax.set_title(self.summary(), fontsize=8)
        return fig


# --------------------------------------------------------------------------- shared helpers

def _free_positions(seq: list[int], token_ids) -> list[int]:
    """Positions whose next token the model chooses (not inside a forced block)."""
    from ..tokens import find_image_blocks

    forced = set()
    for blk in find_image_blocks(seq, token_ids):
        forced.update(range(blk.start, blk.end - 1))        # <img> and image tokens: the next token is forced
    return [i for i in range(len(seq) - 1) if i not in forced]


def _text_sequences(model, n: int, split: str):
    """Token ids of ``n`` held-out stories and ``n`` text-only samples, as the training code encodes them."""
    from ..sequences import encode_pieces, story_pieces
    from ..shapeworld import world as W

    texts = [W.story_sample(s, split).segments for s in range(n)] + \
            [W.text_only_sample(s, split).segments for s in range(n)]
    return [encode_pieces(model, story_pieces(segs))[0] for segs in texts]


def _left_padded(model, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [model.encode_ids(p) for p in prompts]
    L, pad = max(map(len, ids)), model.tokenizer.pad_token_id
    batch = torch.tensor([[pad] * (L - len(i)) + i for i in ids], device=model.device)
    mask = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids], device=model.device)
    return batch, mask


def _block_features(model, captions: list[str]) -> torch.Tensor:
    """``[len(captions), 64, vit_dim]``: the output resampler's features for ``caption<img>``, greedy, batched."""
    from ..tokens import generation_prompt

    ids, mask = _left_padded(model, [generation_prompt(c) for c in captions])
    out = model.lvlm.generate(ids, attention_mask=mask, max_new_tokens=model.lvlm.num_img_tokens + 1,
                              pad_token_id=model.tokenizer.pad_token_id)
    return torch.stack([out.images[b][0].features for b in range(len(captions))])


def _gen_kw(model) -> dict:
    return dict(eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)


# --------------------------------------------------------------------------- 1, 2: resamplers

@torch.no_grad()
def claim1(model, split: str = "test", sample: int = 0) -> ClaimResult:
    """Input resampler: ViT tokens per view in, LLM embeddings per view out, image-token slots in the prompt."""
    from ..resampler import ResamplerConfig
    from ..shapeworld import world as W

    image = W.comprehension_sample(sample, split).image
    feats, _, tiles = model.encode_image(image)                          # [V, 256, vit_dim]
    out = model.lvlm.input_resampler(feats)                              # [V, Q, llm_dim]
    slots = model.image_prompt(1).count("<img_")
    m = dict(views=len(tiles), vit_tokens=int(feats.shape[1]), resampler_out=int(out.shape[1]),
             prompt_slots=slots, published_queries=ResamplerConfig.published_input().num_queries)
    ok = m["vit_tokens"] == 256 and m["resampler_out"] == 64 and slots == 64
    return ClaimResult(
        1, "the input resampler compresses 256 ViT tokens to 64", "256 ViT tokens -> 64 queries",
        f"grid_size 8: {m['published_queries']} queries", m, HOLDS if ok else FAILS,
        f"{m['views']} views: {m['vit_tokens']} ViT tokens -> {m['resampler_out']} per view, "
        f"{slots} image-token slots per view in the prompt")


@torch.no_grad()
def claim2(model, split: str = "test", sample: int = 0) -> ClaimResult:
    """Output resampler: features per generated image, and which pooling of the 256 ViT tokens is the target."""
    from ..images import normalize
    from ..sequences import caption_pieces, collate, encode_pieces
    from ..shapeworld import world as W
    from ..training.data import image_to_unit

    s = W.caption_image_sample(sample, split)
    vit = model.vit(normalize(image_to_unit(s.image)[None]).to(device=model.device, dtype=model.dtype))  # [1, 256, D]
    batch = collate(model, [encode_pieces(model, caption_pieces(s.caption, vit[0]))], model.device)
    out = model.lvlm(**batch)
    rec, target = out["rec"], out["target"].float()                      # [1, Q, D]
    v = vit.float()
    n, t, d = v.shape
    pooled_1d = v.reshape(n, 64, t // 64, d).mean(2)                     # runs of consecutive raster tokens
    side = int(round(t ** 0.5))
    pooled_2d = v.reshape(n, side // 2, 2, side // 2, 2, d).mean((2, 4)).reshape(n, 64, d)   # 2x2 squares
    tol = 1e-4 * float(v.abs().max())
    m = dict(vit_tokens=t, features_out=int(rec.shape[1]),
             target_is_1d_pool=bool(target.shape == pooled_1d.shape and (target - pooled_1d).abs().max() <= tol),
             target_is_2d_pool=bool(target.shape == pooled_2d.shape and (target - pooled_2d).abs().max() <= tol))
    if m["features_out"] == 256:
        verdict = HOLDS
    elif not m["target_is_1d_pool"]:
        verdict = UNLIKE
    else:
        verdict = FAILS
    pool = "1-D runs of 4" if m["target_is_1d_pool"] else "2-D 2x2 squares" if m["target_is_2d_pool"] else "neither pool"
    return ClaimResult(
        2, "the output resampler expands 64 hidden states to 256 features", "64 -> 256 ViT-like features",
        "64 -> 64; target = 256 ViT tokens average-pooled 1-D by 4", m, verdict,
        f"64 hidden states -> {m['features_out']} features; regression target = the {t} ViT tokens pooled "
        f"as {pool}")


# --------------------------------------------------------------------------- 3, 5, 6: <img>

@torch.no_grad()
def claim3(model, n: int = 10, split: str = "test") -> ClaimResult:
    """Teacher-forced greedy ``<img>`` decisions on ``n`` held-out stories; whether training labels ``<img>``."""
    from ..sequences import encode_pieces, story_pieces
    from ..shapeworld import evaluate as E
    from ..shapeworld import world as W

    tp = fp = fn = 0
    for s in range(n):
        pred, act = E.boi_predictions(model, W.story_sample(s, split).segments)
        tp += sum(p and a for p, a in zip(pred, act))
        fp += sum(p and not a for p, a in zip(pred, act))
        fn += sum(a and not p for p, a in zip(pred, act))
    ids, labels = encode_pieces(model, story_pieces(W.story_sample(0, split).segments))[:2]
    boi = [i for i, t in enumerate(ids) if t == model.token_ids.boi]
    labelled = all(int(labels[i]) == model.token_ids.boi for i in boi)
    recall, precision = Rate(tp, tp + fn), Rate(tp, tp + fp)
    m = dict(recall=recall, precision=precision, boi_labelled_in_training=labelled)
    # "given, not predicted": the model must not put <img> where the story has a picture
    verdict = FAILS if recall.lo > 0.5 else HOLDS if recall.hi < 0.5 else CAVEAT
    return ClaimResult(
        3, "BOI is given in the prompt, not predicted", "<img> is given, never predicted",
        "t2i script puts <img> in the prompt, but training labels <img>", m, verdict,
        f"{n} held-out stories, greedy <img> where the story has a picture: recall {recall}, precision "
        f"{precision}; <img> labelled in training: {labelled}")


@torch.no_grad()
def claim5(model, processors=None, split: str = "test", sample: int = 0) -> ClaimResult:
    """Is ``<img>`` in the blocked set, and does any processor change its score outside a block?

    ``processors``: processors to check (default: the published ``faithful`` one and ``strict``)."""
    from ..generation import MODES, AutoImageTokenGenerationProcessor, blocked_token_ids

    tid = model.token_ids
    if processors is None:
        processors = [AutoImageTokenGenerationProcessor(token_ids=tid, mode=mode) for mode in MODES]
    seq = _text_sequences(model, 1, split)[-1]                        # a text-only sample: outside any block
    ids = torch.tensor([seq], device=model.device)
    logits = model.lvlm(ids)["logits"][0].float()                     # [T, V]
    changed = 0
    for p in processors:
        for t in range(len(seq) - 1):
            out = p(ids[:, : t + 1], logits[t: t + 1])
            changed += bool(out[0, tid.boi] != logits[t, tid.boi])
    checks = len(processors) * (len(seq) - 1)
    in_set = tid.boi in blocked_token_ids(tid, model.lvlm.num_img_tokens)
    m = dict(boi_in_blocked_set=in_set, boi_score_changed=Rate(changed, checks))
    verdict = HOLDS if not in_set and changed == 0 else FAILS
    return ClaimResult(
        5, "BOI is never blocked, so the model could start an image unprompted", "<img> is never blocked",
        "true: <img> is not in the blocked set", m, verdict,
        f"<img> in the blocked set: {in_set}; its score changed by the processor at {m['boi_score_changed']} "
        f"text positions ({len(processors)} processor(s))")


@torch.no_grad()
def claim6(model, n: int = 6, split: str = "test", max_new_tokens: int = 200) -> ClaimResult:
    """Second images: teacher-forced ``<img>`` hits at the 2nd/3rd picture of ``n`` stories that have them,
    and greedy continuations of ``n`` story openings (the LLM alone, at most 3 blocks) that open two or more."""
    from ..shapeworld import evaluate as E
    from ..shapeworld import world as W

    stories, s = [], 0
    while len(stories) < n and s < 50 * n:
        st = W.story_sample(s, split)
        if st.n_images >= 2:
            stories.append(st)
        s += 1
    hits = later = 0
    for st in stories:
        pred, act = E.boi_predictions(model, st.segments)
        where = [i for i, a in enumerate(act) if a][1:]                 # the pictures after the first
        later += len(where)
        hits += sum(pred[i] for i in where)
    ids, mask = _left_padded(model, [st.segments[0] for st in stories])
    out = model.lvlm.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, max_blocks=3, **_gen_kw(model))
    opened = [len(out.images[b]) + len(out.incomplete_blocks[b] if out.incomplete_blocks else []) for b in range(len(stories))]
    forced, free = Rate(hits, later), Rate(sum(o >= 2 for o in opened), len(stories))
    m = dict(second_boi_teacher_forced=forced, openings_with_two_or_more=free)
    verdict = FAILS if hits or free.k else CAVEAT
    return ClaimResult(
        6, "a second image cannot be started automatically", "no second image without a prompt",
        "nothing in the processor prevents it; depends on training", m, verdict,
        f"teacher-forced <img> at the 2nd/3rd picture of {len(stories)} stories: {forced}; greedy openings "
        f"that opened 2+ blocks: {free}")


# --------------------------------------------------------------------------- 4, 8, 9: the processor and decoding

@torch.no_grad()
def claim4(model, n: int = 6, split: str = "test", processor=None, mode: str = "faithful") -> ClaimResult:
    """At every free position of ``n`` stories and ``n`` text-only samples (teacher forcing): does a "blocked"
    token win greedy decoding after the processor, and how much sampling probability is left on them?

    ``processor``: the processor to measure (default ``AutoImageTokenGenerationProcessor(mode=mode)``)."""
    from ..generation import AutoImageTokenGenerationProcessor, blocked_token_ids

    tid = model.token_ids
    proc = processor or AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=model.lvlm.num_img_tokens,
                                                          mode=mode)
    blocked = torch.tensor(blocked_token_ids(tid, model.lvlm.num_img_tokens), device=model.device)
    wins, masses = 0, []
    for seq in _text_sequences(model, n, split):
        ids = torch.tensor([seq], device=model.device)
        logits = model.lvlm(ids)["logits"][0].float()                  # [T, V]
        for t in _free_positions(seq, tid):
            out = proc(ids[:, : t + 1], logits[t: t + 1])              # [1, V]
            wins += bool(torch.isin(out.argmax(-1), blocked))
            masses.append(float(out.softmax(-1)[0, blocked].sum()))
    masses = np.array(masses)
    k = len(masses)
    mean, half = float(masses.mean()), 1.96 * float(masses.std(ddof=1)) / math.sqrt(k) if k > 1 else float("nan")
    m = dict(greedy_wins=Rate(wins, k), sampling_mass_mean=mean, sampling_mass_ci=(max(0.0, mean - half), mean + half),
             sampling_mass_max=float(masses.max()), positions=k)
    verdict = FAILS if wins else CAVEAT if masses.max() > 0 else HOLDS
    return ClaimResult(
        4, "outside an image block the processor blocks the image tokens", "image tokens are blocked outside a block",
        "logits set to 0.0: a ban only when other logits are higher", m, verdict,
        f"{k} free positions ({proc.mode} processor): a blocked token wins greedy at {m['greedy_wins']}; "
        f"sampling at T=1 leaves {mean:.2e} (95% CI {m['sampling_mass_ci'][0]:.1e}-{m['sampling_mass_ci'][1]:.1e}, "
        f"max {m['sampling_mass_max']:.1e}) of the probability on them")


@torch.no_grad()
def claim8(model, n: int = 4, split: str = "test", cut_budget: int = 30, processor=None) -> ClaimResult:
    """Image tokens between ``<img>`` and ``</img>`` in ``n`` caption → image runs with a full budget, and
    what a budget of ``cut_budget`` tokens returns. ``processor``: replaces the default one (token by token)."""
    from ..shapeworld import world as W
    from ..tokens import generation_prompt

    tid = model.token_ids
    img = set(tid.img)

    def counts(seq):
        out, inside = [], None
        for t in seq:
            if t == tid.boi:
                inside = 0
            elif t == tid.eoi and inside is not None:
                out.append(inside)
                inside = None
            elif inside is not None and t in img:
                inside += 1
        return out

    def run(caption, budget):
        ids = torch.tensor([model.encode_ids(generation_prompt(caption))], device=model.device)
        kw = dict(fast_forced_block=False, logits_processor=[processor]) if processor is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)                # the cut block's warning is what we measure
            o = model.lvlm.generate(ids, max_new_tokens=budget, **kw, **_gen_kw(model))
        return o, counts(o.sequences[0, o.prompt_length - 1:].tolist())

    captions = [W.caption_image_sample(s, split).caption for s in range(n)]
    sizes = [c for cap in captions for c in run(cap, model.lvlm.num_img_tokens + 1)[1]]
    cut, cut_sizes = run(captions[0], cut_budget)
    n64 = sum(c == 64 for c in sizes)
    cut_images, cut_open = len(cut.images[0]), len(cut.incomplete_blocks[0]) if cut.incomplete_blocks else 0
    m = dict(complete_blocks_of_64=Rate(n64, len(sizes)), block_sizes=sorted(set(sizes)),
             cut_budget=cut_budget, cut_images_returned=cut_images, cut_blocks_incomplete=cut_open)
    if not sizes or n64 < len(sizes):
        verdict = FAILS
    elif cut_open and not cut_images:
        verdict = CAVEAT
    else:
        verdict = HOLDS
    return ClaimResult(
        8, "exactly 64 image tokens are always generated", "64 image tokens, always",
        "true when a block completes; a block cut by max_new_tokens is dropped silently", m, verdict,
        f"complete blocks with 64 image tokens: {m['complete_blocks_of_64']} (sizes {m['block_sizes']}); with "
        f"max_new_tokens={cut_budget}: {cut_images} image(s) returned, {cut_open} block(s) left incomplete")


def _story_openings(split: str, n: int, words: int = 4) -> list[str]:
    from ..shapeworld import world as W

    return [" ".join(W.story_sample(s, split).segments[0].split()[:words]) for s in range(n)]


@torch.no_grad()
def claim9(model, n: int = 4, seeds: int = 4, do_sample: bool = False, max_new_tokens: int = 14,
           split: str = "test") -> ClaimResult:
    """The published call, run through ``transformers``' own ``generate``:
    ``GenerationConfig(do_sample=False, temperature=0.7, top_p=0.5)`` (``do_sample`` is the parameter), on
    ``n`` open-ended story openings x ``seeds`` random seeds, compared with plain greedy decoding."""
    from transformers import GenerationConfig, LogitsProcessorList

    from ..generation import AutoImageTokenGenerationProcessor

    llm, tid = model.lvlm.llm, model.token_ids

    def run(ids, cfg, seed):
        torch.manual_seed(seed)                                          # transformers samples from the global RNG
        proc = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=model.lvlm.num_img_tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                              # temperature without do_sample warns
            out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                               logits_processor=LogitsProcessorList([proc]))
        return out[0, ids.shape[1]:].tolist()

    from transformers.utils import logging as hf_logging

    kw = dict(max_new_tokens=max_new_tokens, **_gen_kw(model))
    same = runs = 0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()          # "flags ... may be ignored" is the published call's point, not news
    try:
        greedy_cfg = GenerationConfig(do_sample=False, **kw)
        call_cfg = GenerationConfig(do_sample=do_sample, temperature=0.7, top_p=0.5, **kw)
        for prompt in _story_openings(split, n):
            ids = torch.tensor([model.encode_ids(prompt)], device=model.device)
            greedy = run(ids, greedy_cfg, 0)
            for s in range(seeds):
                same += run(ids, call_cfg, s) == greedy
                runs += 1
    finally:
        hf_logging.set_verbosity(verbosity)
    rate = Rate(same, runs)
    m = dict(equal_to_greedy=rate, do_sample=do_sample)
    verdict = FAILS if same == runs else HOLDS
    return ClaimResult(
        9, "generate samples with temperature 0.7, top_p 0.5", "sampling, T=0.7, top_p=0.5",
        "those values are passed, but do_sample=False: greedy", m, verdict,
        f"transformers generate, GenerationConfig(do_sample={do_sample}, temperature=0.7, top_p=0.5) on {n} "
        f"openings x {seeds} seeds: output equal to greedy in {rate}")


# --------------------------------------------------------------------------- 7, 12: the de-tokenizer

@torch.no_grad()
def claim7(model, n: int = 4, seeds: tuple[int, int] = (0, 1), num_inference_steps: int = 10,
           sample_runs: int = 3, split: str = "test") -> ClaimResult:
    """Where variety comes from. LLM: the 64 hidden states of ``caption<img>`` under greedy decoding and under
    sampling (T=1, faithful processor, ``sample_runs`` generators). De-tokenizer: the same features of ``n``
    captions drawn with the two ``seeds``; variety that counts is a change in what the pixel judge reads
    (shape, colour, position of every object), the pixel distance is reported beside it (in 1/255 units).

    The judge is a threshold reader, so any pixel change can flip a reading near a boundary. Its noise floor is
    measured on the same pictures: the first seed's picture plus the very pixel difference the second seed
    made, its pixels shuffled (same amount of change, no structure). The seeds count as changing what is
    drawn only when their rate of changed readings exceeds that floor's, by a 95 % interval of the difference
    (:func:`newcombe`) that excludes zero."""
    from ..shapeworld import judge as J
    from ..shapeworld import world as W
    from ..tokens import generation_prompt

    captions = [W.caption_image_sample(s, split).caption for s in range(n)]
    ids = torch.tensor([model.encode_ids(generation_prompt(captions[0]))], device=model.device)
    block = model.lvlm.num_img_tokens + 1
    ref = model.lvlm.generate(ids, max_new_tokens=block).images[0][0].hidden.float()
    rel = 0.0
    for k in range(sample_runs):
        h = model.lvlm.generate(ids, max_new_tokens=block, do_sample=True, temperature=1.0,
                                generator=torch.Generator().manual_seed(k)).images[0][0].hidden.float()
        rel = max(rel, float((h - ref).abs().max() / ref.abs().max()))
    # float rounding between the one-pass and the step-by-step block is ~1e-6 relative; a sampled token is O(1)
    block_fixed = rel < 1e-4
    feats = _block_features(model, captions)
    a, b = (model.draw(feats, num_inference_steps=num_inference_steps, seed=s) for s in seeds)

    def reading(im):
        return sorted((d.shape, d.colour, d.position) for d in J.judge_image(im))

    rng = np.random.default_rng(0)
    differ = floor = 0
    pixels = []
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.int16), np.asarray(y, np.int16)                # [H, W, 3]
        delta = (y - x).reshape(-1, 3)
        shuffled = np.clip(x + delta[rng.permutation(len(delta))].reshape(x.shape), 0, 255).astype(np.uint8)
        seen = reading(x.astype(np.uint8))
        differ += seen != reading(y.astype(np.uint8))
        floor += seen != reading(shuffled)
        pixels.append(float(np.abs(delta).mean()))
    pixel = float(np.mean(pixels))
    gap = newcombe(differ, n, floor, n)
    m = dict(block_max_rel_diff=rel, block_deterministic=block_fixed, judge_reading_differs=Rate(differ, n),
             judge_floor=Rate(floor, n), difference_ci=gap, mean_pixel_diff=pixel, seeds=tuple(seeds),
             steps=num_inference_steps)
    if not block_fixed or gap[0] > 0:
        verdict = FAILS
    elif pixel > 0:
        verdict = CAVEAT
    else:
        verdict = HOLDS
    return ClaimResult(
        7, "the forced block is deterministic, so image generation cannot be stochastic",
        "no stochastic image generation", "hidden states fixed by the prompt (greedy); variety from the "
        "de-tokenizer noise and sampled text", m, verdict,
        f"block under {sample_runs} sampled runs: max relative change "
        # below 1e-5 the change is float rounding, whose digits vary with threads and kernels
        f"{'below 1e-5 (rounding)' if rel < 1e-5 else f'{rel:.1e}'}; seeds {seeds[0]} vs {seeds[1]} "
        f"({num_inference_steps} steps) on {n} captions: judge reads differently in {m['judge_reading_differs']}, "
        f"with that pixel change shuffled in {m['judge_floor']} (difference 95% CI {gap[0]:+.2f} to {gap[1]:+.2f}); "
        f"mean pixel difference {pixel:.2f}/255")


JUDGE_KEYS = ("shape", "colour", "position", "all")


def step_table(table: dict) -> str:
    """Claim 12's ``{steps: {metric: Rate}}`` as text: one row per step count, ``k/n [lo, hi]`` per judge metric."""
    head = f"{'steps':>5} " + " ".join(f"{k:>20}" for k in JUDGE_KEYS)
    return "\n".join([head] + [f"{steps:>5} " + " ".join(f"{str(row[k]):>20}" for k in JUDGE_KEYS)
                               for steps, row in table.items()])


@torch.no_grad()
def claim12(model, n: int = 4, steps=(1, 2, 5, 10, 25, 50), split: str = "test", seed: int = 0,
            progress: bool = False) -> ClaimResult:
    """Every judge metric at each Euler step count in ``steps``, on ``n`` held-out captions (test split;
    guidance as configured, one noise seed), with Wilson intervals."""
    from tqdm.auto import tqdm

    from ..shapeworld import judge as J
    from ..shapeworld import world as W

    steps = tuple(sorted(set(int(s) for s in steps)))
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive ints, got {steps}")
    captions = [W.caption_image_sample(s, split).caption for s in range(n)]
    feats = _block_features(model, captions)
    table = {}
    for k in tqdm(steps, desc="claim 12: steps", disable=not progress):
        scores = [J.score_image(im, c) for im, c in zip(model.draw(feats, num_inference_steps=k, seed=seed), captions)]
        table[k] = {key: Rate(sum(bool(s[key]) for s in scores), n) for key in JUDGE_KEYS}
    top = steps[-1]
    at_top = table[top]["all"]
    # the fewest steps whose whole-caption accuracy cannot be told apart from the most steps' (intervals overlap)
    enough = next(k for k in steps if table[k]["all"].hi >= at_top.lo and table[k]["all"].lo <= at_top.hi)
    best = max(steps, key=lambda k: table[k]["all"].k)
    m = dict(table=table, steps=steps, n=n, fewest_steps_as_good=enough, best_steps=best)
    if at_top.k == 0:
        verdict = FAILS
    elif enough < top or table[best]["all"].lo > at_top.hi:
        verdict = CAVEAT
    else:
        verdict = HOLDS
    curve = ", ".join(f"{k}:{table[k]['all'].k}" for k in steps)
    return ClaimResult(
        12, "the de-tokenizer turns ViT-like features into an image with SDXL in 50 steps",
        "SDXL, 50 steps", "SDXL UNet, 50 Euler steps as a setting", m, verdict,
        f"whole-caption judge accuracy on {n} {split} captions by steps ({curve} of {n}); {top} steps "
        f"{at_top}; {enough} step(s) already within its interval")


# --------------------------------------------------------------------------- 10, 11: structure and cost

def claim10(n: int = 500, seed: int = 0, base: int = 448, keep_ratio: bool = False, stretch_checks: int = 12) -> ClaimResult:
    """Any-res on ``n`` random image sizes: the LLaVA-NeXT choice against ``transformers``'
    ``select_best_resolution``, the grid = the smaller-area of the two rules, tiles of ``base`` with normalised
    centre positions; on ``stretch_checks`` blank images of sizes whose ratio is not a grid's, whether the
    tiles are the stretched image (no padding border). ``keep_ratio`` is passed to ``tile_image``."""
    from PIL import Image
    from transformers.image_processing_utils import select_best_resolution

    from ..anyres import choose_resolution, tile_image, tile_positions

    rng = np.random.default_rng(seed)
    sizes = rng.integers(32, 3000, size=(n, 2))
    llava_ok = smaller_ok = pos_ok = 0
    for w, h in sizes.tolist():
        d = choose_resolution((w, h), base)
        hf = select_best_resolution((h, w), [(ch, cw) for cw, ch in d.candidates])          # (height, width)
        llava_ok += tuple(d.llava_choice) == (hf[1], hf[0])
        areas = {c: c[0] * c[1] for c in (d.llava_choice, d.aspect_choice)}
        smaller_ok += d.chosen[0] * d.chosen[1] == min(areas.values()) and d.chosen in areas
        C, R = d.grid
        want = [((c + 0.5) / C, (r + 0.5) / R) for r in range(R) for c in range(C)] + [(0.5, 0.5)]
        pos_ok += torch.allclose(tile_positions(d.grid), torch.tensor(want, dtype=torch.float32))
    small = 64                                                           # the tile size does not change the rule
    stretched = checked = 0
    for w, h in (rng.integers(40, 400, size=(4 * stretch_checks, 2))).tolist():
        d = choose_resolution((w, h), small)
        if abs(w / h - d.chosen[0] / d.chosen[1]) < 0.05:
            continue                                                     # already the grid's shape: nothing to see
        t = tile_image(Image.new("RGB", (w, h), (255, 255, 255)), base=small, keep_ratio=keep_ratio, normalize=False)
        stretched += bool((t.pixels[:-1] > 0.5).all())                   # no dark padding anywhere in the tiles
        checked += 1
        if checked == stretch_checks:
            break
    tile_side = int(tile_image(Image.new("RGB", (500, 300)), base=base, normalize=False).pixels.shape[-1])
    m = dict(llava_matches_transformers=Rate(llava_ok, n), chosen_is_smaller_area=Rate(smaller_ok, n),
             positions_are_centres=Rate(pos_ok, n), stretched=Rate(stretched, checked), tile_side=tile_side)
    if tile_side != base or pos_ok < n:
        verdict = FAILS
    elif llava_ok < n or smaller_ok < n or stretched < checked:
        verdict = UNLIKE
    else:
        verdict = CAVEAT
    return ClaimResult(
        10, "any-res picks a grid, splits into 448 tiles with per-tile positions", "grid + 448 tiles + positions",
        "smaller-area of LLaVA-NeXT and aspect rules; image stretched; positions = tile centres", m, verdict,
        f"{n} random sizes: LLaVA choice = transformers' select_best_resolution in {m['llava_matches_transformers']}, "
        f"grid = smaller-area choice in {m['chosen_is_smaller_area']}, positions = centres in "
        f"{m['positions_are_centres']}; tiles {tile_side} px; stretched (no padding) in {m['stretched']}")


def rival_token_counts() -> dict[str, int]:
    """Image tokens per image of Janus and Chameleon, read from their ``transformers`` implementations."""
    import inspect

    from transformers import ChameleonProcessor, JanusVisionConfig

    return {"Janus": JanusVisionConfig().num_image_tokens,
            "Chameleon": inspect.signature(ChameleonProcessor.__init__).parameters["image_seq_length"].default}


@torch.no_grad()
def claim11(model, rivals: dict[str, int] | None = None, split: str = "test",
            num_inference_steps: int | None = None) -> ClaimResult:
    """Forward passes of the LLM and of the de-tokenizer's UNet for one caption → image (counted with hooks;
    the de-tokenizer at ``num_inference_steps``, default the model's), against the image tokens per image of
    ``rivals`` (default: Janus and Chameleon from transformers)."""
    from ..shapeworld import world as W
    from ..tokens import generation_prompt

    rivals = rival_token_counts() if rivals is None else dict(rivals)
    caption = W.caption_image_sample(0, split).caption
    ids = torch.tensor([model.encode_ids(generation_prompt(caption))], device=model.device)
    llm_calls, unet_calls = [], []
    h1 = model.lvlm.llm.register_forward_hook(lambda *a: llm_calls.append(1))
    h2 = model.detok.unet.register_forward_hook(lambda *a: unet_calls.append(1))
    try:
        out = model.lvlm.generate(ids, max_new_tokens=model.lvlm.num_img_tokens + 1, fast_forced_block=False)
        step_passes = len(llm_calls) - 1                                 # minus the prompt's own pass
        llm_calls.clear()
        model.lvlm.generate(ids, max_new_tokens=model.lvlm.num_img_tokens + 1)
        fast_passes = len(llm_calls)
        model.draw(out.images[0][0].features, num_inference_steps=num_inference_steps, seed=0)
    finally:
        h1.remove()
        h2.remove()
    m = dict(llm_steps_per_image=step_passes, llm_passes_fast_path=fast_passes, unet_passes_per_image=len(unet_calls),
             rivals=rivals)
    fewer = all(step_passes < v for v in rivals.values())
    verdict = (CAVEAT if unet_calls else HOLDS) if fewer else FAILS
    riv = ", ".join(f"{k} {v}" for k, v in rivals.items())
    return ClaimResult(
        11, "64 learnable-query tokens make generation faster than Chameleon / Janus", "64 tokens: faster",
        "65 decoding steps; Janus 576, Chameleon 1024 tokens (8192 is Chameleon's codebook)", m, verdict,
        f"LLM decoding steps per image {step_passes} ({fast_passes} pass on the fast path) against {riv}; "
        f"plus {len(unet_calls)} UNet passes of the de-tokenizer")


# --------------------------------------------------------------------------- the ledger

CLAIMS = {1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7, 8: claim8, 9: claim9,
          10: claim10, 11: claim11, 12: claim12}
_TITLES = {1: "the input resampler compresses 256 ViT tokens to 64",
           2: "the output resampler expands 64 hidden states to 256 features",
           3: "BOI is given in the prompt, not predicted",
           4: "outside an image block the processor blocks the image tokens",
           5: "BOI is never blocked, so the model could start an image unprompted",
           6: "a second image cannot be started automatically",
           7: "the forced block is deterministic, so image generation cannot be stochastic",
           8: "exactly 64 image tokens are always generated",
           9: "generate samples with temperature 0.7, top_p 0.5",
           10: "any-res picks a grid, splits into 448 tiles with per-tile positions",
           11: "64 learnable-query tokens make generation faster than Chameleon / Janus",
           12: "the de-tokenizer turns ViT-like features into an image with SDXL in 50 steps"}


def ledger(model, n: int = 6, n_steps: int = 8, steps=(1, 2, 5, 10, 25, 50), only=None, model_name: str = "",
           progress: bool = False) -> Ledger:
    """Run every claim (or the ids in ``only``) on ``model``. ``n``: stories / captions / prompts per claim
    (claim 10 always uses 500 sizes); ``n_steps``: captions for claim 12's step sweep over ``steps``.
    A claim whose measurement raises is kept as ``not measured`` with the error as its evidence."""
    from tqdm.auto import tqdm

    if n < 1 or n_steps < 1:
        raise ValueError(f"n and n_steps must be at least 1, got n={n}, n_steps={n_steps}")
    ids = sorted(CLAIMS) if only is None else sorted(set(only))
    bad = [i for i in ids if i not in CLAIMS]
    if bad:
        raise ValueError(f"no claim {bad}; claims are numbered 1-12")
    calls = {1: lambda: claim1(model), 2: lambda: claim2(model), 3: lambda: claim3(model, n=n),
             4: lambda: claim4(model, n=n), 5: lambda: claim5(model), 6: lambda: claim6(model, n=n, max_new_tokens=160),
             7: lambda: claim7(model, n=n, sample_runs=1), 8: lambda: claim8(model, n=min(n, 2)),
             9: lambda: claim9(model, n=min(n, 3), seeds=2, max_new_tokens=8),
             10: lambda: claim10(), 11: lambda: claim11(model),
             12: lambda: claim12(model, n=n_steps, steps=steps)}
    results = []
    for i in tqdm(ids, desc="claims", disable=not progress):
        try:
            results.append(calls[i]())
        except Exception as e:                        # a broken measurement is a row, not a crash of the ledger
            results.append(ClaimResult(i, _TITLES[i], "", "", {}, NOT_MEASURED, f"{type(e).__name__}: {e}"))
    return Ledger(results, model_name, dict(n=n, n_steps=n_steps, steps=tuple(steps)))
