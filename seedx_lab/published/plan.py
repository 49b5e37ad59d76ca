"""Know before you download: the size of the published SEED-X, stage by stage, and where it would go.

:func:`build_stages` builds every stage at its published size on the ``meta`` device (shapes only:
nothing is allocated and nothing is downloaded): the LLM (LLaMA-2-13B widened to 32330 tokens), the
Qwen-VL ViT-G, the input and output resamplers with ``patch_pos_embed``, and the SDXL de-tokenizer
(its adapter resampler, the SDXL base UNet and VAE). :func:`make_plan` counts their parameters, sizes
them per dtype with accelerate's ``compute_module_sizes`` (parameters and buffers), estimates the
activation memory of one generation, and asks accelerate's ``infer_auto_device_map`` where the stages
would go on ``gpus`` GPUs of ``gpu_memory`` each. ``seedx-lab plan`` prints it (:func:`format_plan`).

Activation memory of one generation at the published settings (``b`` = bytes per element of the
dtype; eager attention, i.e. attention scores materialised — fused SDPA kernels need less):

* the LLM reads the largest any-res input (``V`` = 5 views: 4 tiles and the global view, each
  ``64`` image tokens and 2 framing tokens), ``text_tokens`` of text, and generates one image block
  (65 tokens), so a sequence of ``L = V * 66 + text_tokens + 65`` tokens;
  - KV cache: ``2 * layers * L * kv_heads * head_dim * b``;
  - prefill working set: ``L * (4 * hidden + 3 * intermediate) * b + heads * L^2 * b + vocab * 4``
    (residual stream, attention and MLP intermediates of one layer, one layer's attention scores,
    and the float32 logits of the last position);
  - the published ``generate`` keeps every layer's hidden states (``output_hidden_states=True``):
    ``(layers + 1) * L * hidden * b``;
* ViT over ``V`` views of ``N = (448 / 14)^2`` patches: ``V * N * (4 * width + mlp_width) * b +
  V * heads * N^2 * b``;
* UNet, one denoising step with classifier-free guidance (batch 2): the skip feature maps of every
  down block, ``sum_i 2 * C_i * s_i^2 * (layers_per_block + 1) * b``, plus 4 feature maps of the largest
  level and the attention scores of the largest self-attention, ``max_i 2 * heads_i * (s_i^2)^2 * b``
  (``s_i`` = latent side 128 halved per level, ``C_i`` its channels);
* VAE decode of one 1024 x 1024 image: ``3 * C_0 * H * W * b_vae + (H/8 * W/8)^2 * b_vae`` (three
  full-resolution feature maps of its last block and its mid-block attention scores; in float16 the
  SDXL VAE runs in float32, ``force_upcast``).

The stages run one after another, so the activation peak is the largest of the four (the LLM's
three terms together). The device map keeps that peak free on every GPU; a stage that
``infer_auto_device_map`` can only put on ``cpu`` or ``disk`` does not fit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VIEWS = 5                     # the largest any-res input: 4 tiles (1x4, 4x1 or 2x2) + the global view
FRAMING = 2                   # <img> ... </img> (or <patch> ... </patch>) around each view's 64 tokens
# whole stages stay on one device, as the published scripts place them; the LLM splits between layers
NO_SPLIT = ["LlamaDecoderLayer", "VisionTransformer", "Resampler", "ResamplerXLV2", "UNet2DConditionModel",
            "AutoencoderKL"]
GiB = 2 ** 30


def build_stages() -> dict[str, nn.Module]:
    """Every stage of the published SEED-X at full size on the ``meta`` device, in pipeline order."""
    from ..detokenizer import Detokenizer, DetokenizerConfig
    from ..lvlm import LLMConfig, build_llm
    from ..resampler import Resampler
    from ..vit import VisionTransformer
    from .checkpoints import PublishedConfigs

    configs = PublishedConfigs.published()
    detok = Detokenizer(DetokenizerConfig.published(), device="meta")
    patch_pos = nn.Module()
    patch_pos.patch_pos_embed = nn.Parameter(torch.empty(4, configs.agent["input_resampler"]["embed_dim"], device="meta"))
    return {
        "vit": VisionTransformer(configs.vit_config(), device="meta"),
        "input_resampler": Resampler(configs.resampler_config("input_resampler"), device="meta"),
        "patch_pos_embed": patch_pos,
        "llm": build_llm(LLMConfig.published(), device="meta"),
        "output_resampler": Resampler(configs.resampler_config("output_resampler"), device="meta"),
        "detok_resampler": detok.resampler,
        "unet": detok.unet,
        "vae": detok.vae,
    }


def _sizes(module: nn.Module, dtype: torch.dtype, upcast_vae: bool) -> int:
    from accelerate.utils import compute_module_sizes

    special = {n: torch.float32 for n, _ in module.named_parameters()} if upcast_vae else None
    return compute_module_sizes(module, dtype=dtype, special_dtypes=special)[""]


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def activation_bytes(stages: dict[str, nn.Module], dtype: torch.dtype, text_tokens: int = 128) -> dict[str, int]:
    """The activation estimates of the module docstring, in bytes, for ``dtype``."""
    b = _bytes(dtype)
    c = stages["llm"].config
    layers, hidden, inter, heads = c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads
    kv_heads = c.num_key_value_heads or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    L = VIEWS * (64 + FRAMING) + text_tokens + 65
    out = {"llm KV cache": 2 * layers * L * kv_heads * head_dim * b,
           "llm prefill": L * (4 * hidden + 3 * inter) * b + heads * L * L * b + c.vocab_size * 4,
           "llm hidden states kept": (layers + 1) * L * hidden * b}
    vc = stages["vit"].config
    n = (vc.image_size // vc.patch_size) ** 2
    mlp = int(vc.width * vc.mlp_ratio)
    out["vit"] = VIEWS * n * (4 * vc.width + mlp) * b + VIEWS * vc.heads * n * n * b
    u = stages["unet"].config
    sides = [u.sample_size // 2 ** i for i in range(len(u.block_out_channels))]
    heads_u = u.attention_head_dim if isinstance(u.attention_head_dim, (list, tuple)) else [u.attention_head_dim] * len(sides)
    skips = sum(2 * ch * s * s * (u.layers_per_block + 1) for ch, s in zip(u.block_out_channels, sides))
    biggest = max(2 * ch * s * s for ch, s in zip(u.block_out_channels, sides))
    scores = max((2 * h * (s * s) ** 2 for h, s, kind in zip(heads_u, sides, u.down_block_types) if "Attn" in kind), default=0)
    out["unet step"] = (skips + 4 * biggest + scores) * b
    v = stages["vae"].config
    bv = 4 if dtype == torch.float16 and v.force_upcast else b
    f = 2 ** (len(v.block_out_channels) - 1)
    side = u.sample_size * f
    out["vae decode"] = 3 * v.block_out_channels[0] * side * side * bv + ((side // f) ** 2) ** 2 * bv
    return out


@dataclass
class Plan:
    """What :func:`make_plan` found. ``params``: stage -> parameters; ``memory``: dtype name -> stage ->
    bytes; ``activations``: item -> bytes for ``dtype``; ``device_map``: accelerate's (None without GPUs)."""

    dtype: str
    params: dict
    memory: dict
    activations: dict
    peak_activation: int
    gpus: int = 0
    gpu_memory: int | None = None
    device_map: dict | None = None
    not_fitting: list = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def total_bytes(self, dtype: str | None = None) -> int:
        return sum(self.memory[dtype or self.dtype].values())

    @property
    def fits(self) -> bool | None:
        return None if self.device_map is None else not self.not_fitting


def make_plan(dtype: str = "bf16", gpus: int = 0, gpu_memory="80GiB", text_tokens: int = 128,
              stages: dict[str, nn.Module] | None = None) -> Plan:
    """Parameters, memory per stage and dtype, activations, and (``gpus > 0``) accelerate's device map.

    ``dtype``: ``"bf16"``, ``"fp16"`` or ``"fp32"``; ``gpu_memory``: per GPU, an int of bytes or a string
    accelerate reads (``"80GiB"``, ``"24GB"``)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import convert_file_size_to_int

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"gpus must be a non-negative int, got {gpus!r}")
    stages = stages or build_stages()
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in stages.items()}
    memory = {name: {k: _sizes(m, dt, upcast_vae=(k == "vae" and dt == torch.float16 and m.config.force_upcast))
                     for k, m in stages.items()} for name, dt in DTYPES.items()}
    acts = activation_bytes(stages, DTYPES[dtype], text_tokens)
    llm = acts["llm KV cache"] + acts["llm prefill"] + acts["llm hidden states kept"]
    peak = max(llm, acts["vit"], acts["unet step"], acts["vae decode"])
    plan = Plan(dtype, params, memory, acts, peak, gpus)
    if gpus == 0:
        return plan
    try:
        per_gpu = convert_file_size_to_int(gpu_memory) if isinstance(gpu_memory, str) else int(gpu_memory)
    except ValueError:
        raise ValueError(f"gpu_memory must be a size such as '80GiB' or '24GB', got {gpu_memory!r}") from None
    plan.gpu_memory = per_gpu
    whole = nn.ModuleDict(stages)
    vae_fp32 = dtype == "fp16" and stages["vae"].config.force_upcast
    special = {f"vae.{n}": torch.float32 for n, _ in stages["vae"].named_parameters()} if vae_fp32 else None
    room = max(per_gpu - peak, 0)
    max_memory = {i: room for i in range(gpus)}
    max_memory["cpu"] = 2 ** 60           # whatever lands here does not fit on the GPUs
    quiet = logging.getLogger("accelerate.utils.modeling")     # it warns that the planned GPUs are not here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dm = infer_auto_device_map(whole, max_memory=max_memory, no_split_module_classes=NO_SPLIT,
                                   dtype=DTYPES[dtype], special_dtypes=special)
    finally:
        quiet.setLevel(level)
    plan.device_map = dm
    plan.not_fitting = [k for k, d in dm.items() if d in ("cpu", "disk")]
    return plan


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f}"


def _ranges(names: list[str]) -> str:
    """``llm.model.layers.0`` … ``llm.model.layers.12`` -> ``llm.model.layers.0-12``."""
    out, run = [], None
    for n in names:
        if n == "":                       # accelerate's map when one device holds everything
            out.append("every stage")
            continue
        head, _, tail = n.rpartition(".")
        if run and tail.isdigit() and head == run[0] and int(tail) == run[2] + 1:
            run[2] = int(tail)
            continue
        if run:
            out.append(f"{run[0]}.{run[1]}-{run[2]}" if run[2] != run[1] else f"{run[0]}.{run[1]}")
            run = None
        if tail.isdigit():
            run = [head, int(tail), int(tail)]
        else:
            out.append(n)
    if run:
        out.append(f"{run[0]}.{run[1]}-{run[2]}" if run[2] != run[1] else f"{run[0]}.{run[1]}")
    return ", ".join(out)


def format_plan(plan: Plan) -> str:
    """The table ``seedx-lab plan`` prints."""
    lines = ["published SEED-X, built on the meta device (no weights); memory in GiB (parameters + buffers)",
             f"{'stage':<18}{'parameters':>16}{'bf16':>10}{'fp16':>10}{'fp32':>10}"]
    for k, n in plan.params.items():
        lines.append(f"{k:<18}{n:>16,}" + "".join(f"{plan.memory[d][k] / GiB:10.2f}" for d in DTYPES))
    lines.append(f"{'total':<18}{plan.total_params:>16,}" + "".join(f"{plan.total_bytes(d) / GiB:10.2f}" for d in DTYPES))
    lines.append("")
    lines.append(f"activations of one generation in {plan.dtype} (estimates; formulas in seedx_lab/published/plan.py):")
    for k, v in plan.activations.items():
        lines.append(f"  {k:<24}{_gib(v)} GiB")
    lines.append(f"  {'peak (stages in turn)':<24}{_gib(plan.peak_activation)} GiB")
    lines.append(f"weights + activation peak in {plan.dtype}: {(plan.total_bytes() + plan.peak_activation) / GiB:.2f} GiB")
    if plan.device_map is None:
        lines.append("no GPUs given (--gpus N --gpu-memory 80GiB): no device map")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"device map on {plan.gpus} GPU(s) of {plan.gpu_memory / GiB:.1f} GiB, keeping "
                 f"{plan.peak_activation / GiB:.2f} GiB free on each for activations (accelerate infer_auto_device_map):")
    by_device: dict = {}
    for name, d in plan.device_map.items():
        by_device.setdefault(d, []).append(name)
    for d, names in by_device.items():
        where = f"GPU {d}" if isinstance(d, int) else d
        lines.append(f"  {where:<6} {_ranges(names)}")
    if plan.not_fitting:
        lines.append(f"does not fit: {_ranges(plan.not_fitting)} would go to cpu/disk")
    else:
        lines.append("fits: every stage is on a GPU")
    return "\n".join(lines)
