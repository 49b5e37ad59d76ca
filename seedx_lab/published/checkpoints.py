"""Published SEED-X checkpoints: read them into seedx_lab's classes, and write a SeedX in their layout.

SEED-X is released as separate files that its inference scripts assemble. Relative to the
``pretrained/`` folder of the published code (names read from AILab-CVC/SEED-X at commit 24c865b):

* LLM: ``VARIANT/llm/``, a Hugging Face LLaMA folder (``configs/clm_models/llm_seed_x*.yaml``);
  ``VARIANT`` is ``seed_x`` (pre-trained) or ``seed_x_i`` (instruction-tuned);
* agent: ``VARIANT/agent/pytorch_model.bin`` (``configs/clm_models/agent_seed_x*.yaml``);
* visual encoder: ``QwenViT/qwen_vit_G.pt`` (``configs/visual_encoder/qwen_vitg_448.yaml``);
* de-tokenizer: ``seed_detokenizer/first_stage/pytorch_model.bin``
  (``configs/sdxl_adapter/sdxl_qwen_vit_resampler_l4_q64_pretrain_no_normalize.yaml``);
* SDXL base: ``stable-diffusion-xl-base-1.0/{unet,vae,scheduler}/`` (``src/inference/eval_text2img_seed_x.py``);
* tokenizer: ``cvlm_llama2_tokenizer_100img_and_224loc_addpatch/``
  (``configs/tokenizer/clm_llama_tokenizer_224loc_anyres.yaml``, a ``LlamaTokenizer``).

What each file holds, and where it goes here:

* **agent** — a ``state_dict`` of the published ``ContinuousLVLM`` (``src/models/mllm/seed_x.py``), which
  ``from_pretrained`` loads through ``load_zero3_checkpoint`` (``src/models/mllm/utils.py``): that drops
  shape-mismatched keys and calls ``load_state_dict(strict=False)``, so nothing is checked there. The
  module's own keys are ``input_resampler.*``, ``output_resampler.*`` (Qwen-VL ``Resampler`` names),
  ``patch_pos_embed`` [4, 5120] (``add_patch_pos: True``) and ``llm.*``. Here the first three are
  *required* and must match :class:`~seedx_lab.lvlm.ContinuousLVLM` exactly. ``llm.*`` keys are *allowed*
  and sorted by :func:`read_agent_llm`: LLaMA weights (a file saved from the whole agent) overwrite the
  LLM folder's, as in the published load order (folder first, agent on top; giving both is not an error,
  the agent file wins); each layer's ``rotary_emb.inv_freq`` buffer (the published LLaMA class saves it)
  is checked against the recomputed frequencies and skipped; peft names (``base_layer``, ``lora_A/B``,
  ``modules_to_save``, from the ``llm_seed_x_lora.yaml`` training recipe) are unwrapped and the LoRA
  pairs merged, ``W + (B @ A) * lora_alpha / r``, with the ``adapter_config.json`` next to the agent file
  (none there: an error that says how to merge them with peft's ``merge_and_unload``). Any other key is
  an error naming it and the file.
* **visual encoder** — ``Qwen-VL-Chat``'s ``transformer.visual.state_dict()`` (``src/tools/reload_qwen_vit.py``),
  loaded without prefix into ``VisionTransformerWithAttnPool``: keys exactly as
  :class:`~seedx_lab.vit.VisionTransformer` (see vit.py).
* **de-tokenizer** — a ``state_dict`` of ``SDXLAdapter`` (``src/models/detokenizer/adapter_modules.py``,
  ``load_state_dict(strict=False)`` again): ``resampler.*`` (``ResamplerXLV2``) is required here;
  ``unet.*`` keys are allowed and overwrite the SDXL base UNet's weights.
* **SDXL base** — diffusers folders, loaded with ``from_pretrained``; their ``config.json`` files give
  the UNet / VAE / scheduler configs.

Which optional keys the released ``.bin`` files actually carry (``llm.*`` in the agent, ``unet.*`` in the
de-tokenizer), and whether the tokenizer folder has a ``tokenizer.json``, could not be checked without
downloading them; the loader accepts either case.

The hyper-parameters that no weight file records (head counts, image sizes, loss scales) come from the
published YAML configs, kept here as :meth:`PublishedConfigs.published`. A layout written by
:func:`write_published_layout` adds one file the published release does not have, ``seedx_lab.json``,
with the same fields for a model whose widths differ (seedx-tiny); :func:`load_published` reads it when
it is there.

Loading is strict and fails early: every path is checked first (one ``FileNotFoundError`` naming all
that are missing), then every state dict is opened memory-mapped and compared, key by key and shape by
shape, with modules built on the ``meta`` device (a ``ValueError`` names the file, the missing and
unexpected keys, and both shapes of a mismatch) — all before a single weight is copied. Only then are
the weights moved, tensor by tensor, to their device and dtype (``accelerate``'s
``set_module_tensor_to_device``; the LLM and the SDXL parts through ``from_pretrained``, which do the
same and accept a ``device_map``).

Environment variables override the paths: ``SEEDX_ROOT`` (the ``pretrained/`` folder), ``SEEDX_VARIANT``,
and one per part: ``SEEDX_LLM``, ``SEEDX_AGENT``, ``SEEDX_VIT``, ``SEEDX_DETOK``, ``SEEDX_SDXL``,
``SEEDX_TOKENIZER``.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError

from .. import tokens as T
from ..detokenizer import Detokenizer, DetokenizerConfig
from ..lvlm import ContinuousLVLM, LLMConfig, pool_targets
from ..model import NEGATIVES, SeedX, SeedXConfig
from ..resampler import Resampler, ResamplerConfig
from ..validate import no_code_folder
from ..vit import ViTConfig, VisionTransformer

__all__ = [
    "VARIANTS", "PublishedPaths", "PublishedConfigs", "is_published_layout", "variant_for_name",
    "read_state_dict", "check_state_dict", "load_published", "load_vit", "load_llm", "load_agent",
    "load_detokenizer", "load_published_tokenizer", "write_published_layout", "published_negative_features",
    "parameter_counts", "PROMPTS", "published_prompt", "read_agent_llm", "AgentLLM", "rope_inv_freq",
]

# --------------------------------------------------------------------------- layout

VARIANTS = ("seed_x", "seed_x_i")            # pre-trained and general instruction-tuned (same architecture)
NAMES = {"seed-x": "seed_x", "seed-x-i": "seed_x_i"}   # names accepted by seedx_lab.load
LLM_DIR = "{variant}/llm"
AGENT_FILE = "{variant}/agent/pytorch_model.bin"
VIT_FILE = "QwenViT/qwen_vit_G.pt"
DETOK_FILE = "seed_detokenizer/first_stage/pytorch_model.bin"
SDXL_DIR = "stable-diffusion-xl-base-1.0"
TOKENIZER_DIR = "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"
CONFIG_FILE = "seedx_lab.json"               # written by write_published_layout; not part of the release

ENV = {"llm": "SEEDX_LLM", "agent": "SEEDX_AGENT", "vit": "SEEDX_VIT", "detok": "SEEDX_DETOK",
       "sdxl": "SEEDX_SDXL", "tokenizer": "SEEDX_TOKENIZER"}

_LLM_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                      "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.fp16.bin")


def variant_for_name(name) -> str | None:
    """``"seed-x"`` -> ``"seed_x"``, ``"seed-x-i"`` -> ``"seed_x_i"``; anything else -> None."""
    return NAMES.get(str(name).lower()) if isinstance(name, str) else None


def is_published_layout(path) -> bool:
    """True when ``path`` is a folder holding ``VARIANT/agent/pytorch_model.bin`` for a known variant."""
    p = Path(path)
    return p.is_dir() and any((p / AGENT_FILE.format(variant=v)).is_file() for v in VARIANTS)


@dataclass
class PublishedPaths:
    """Where each part of a published SEED-X lives (``None`` = not given)."""

    llm: Path | None
    agent: Path | None
    vit: Path | None
    detok: Path | None
    sdxl: Path | None
    tokenizer: Path | None
    root: Path | None = None
    variant: str = "seed_x"

    @classmethod
    def from_root(cls, root=None, variant: str | None = None, env: Mapping[str, str] | None = None) -> "PublishedPaths":
        """Paths under ``root`` (default ``$SEEDX_ROOT``), each overridable by its environment variable.

        ``variant``: ``"seed_x"`` or ``"seed_x_i"``; default ``$SEEDX_VARIANT``, else the first variant
        whose agent file exists under ``root``, else ``"seed_x"``.
        """
        env = os.environ if env is None else env
        root = root if root is not None else env.get("SEEDX_ROOT") or None
        root = Path(root).expanduser() if root is not None else None
        variant = variant or env.get("SEEDX_VARIANT") or None
        if variant is None:
            found = [v for v in VARIANTS if root is not None and (root / AGENT_FILE.format(variant=v)).is_file()]
            variant = found[0] if found else VARIANTS[0]
        if variant not in VARIANTS:
            raise ValueError(f"unknown SEED-X variant {variant!r}; expected one of {VARIANTS} "
                             "(seed_x_edit needs the de-tokenizer with a condition image, not supported)")
        rel = {"llm": LLM_DIR.format(variant=variant), "agent": AGENT_FILE.format(variant=variant), "vit": VIT_FILE,
               "detok": DETOK_FILE, "sdxl": SDXL_DIR, "tokenizer": TOKENIZER_DIR}
        parts = {}
        for part, relative in rel.items():
            if env.get(ENV[part]):
                parts[part] = Path(env[ENV[part]]).expanduser()
            else:
                parts[part] = root / relative if root is not None else None
        return cls(**parts, root=root, variant=variant)

    def required_files(self) -> dict[str, list[Path]]:
        """For each part, the files that must exist (alternatives are checked in :meth:`problems`)."""
        out: dict[str, list[Path]] = {}
        for part in ENV:
            p = getattr(self, part)
            if p is None:
                continue
            if part == "llm":
                out[part] = [p / "config.json"]
            elif part == "sdxl":
                out[part] = [p / "unet" / "config.json", p / "vae" / "config.json", p / "scheduler" / "scheduler_config.json"]
            else:                                   # a weight file, or the tokenizer folder
                out[part] = [p]
        return out

    def problems(self) -> list[str]:
        """Human-readable list of what is missing; empty when every part is there."""
        out = []
        for part in ENV:
            p = getattr(self, part)
            if p is None:
                out.append(f"{part}: no path (set SEEDX_ROOT to the pretrained/ folder, or {ENV[part]})")
                continue
            for f in self.required_files()[part]:
                if not f.exists():
                    out.append(f"{part}: {f} not found")
            if part == "llm" and (p / "config.json").is_file() and not any((p / w).is_file() for w in _LLM_WEIGHTS):
                out.append(f"llm: no weights in {p} (looked for {', '.join(_LLM_WEIGHTS)})")
            if part == "sdxl":
                for sub in ("unet", "vae"):
                    if (p / sub / "config.json").is_file() and not any((p / sub / w).is_file() for w in _DIFFUSERS_WEIGHTS):
                        out.append(f"sdxl: no weights in {p / sub} (looked for diffusion_pytorch_model*.safetensors / .bin)")
            if part == "tokenizer" and p.is_dir() and not any(
                    (p / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
                out.append(f"tokenizer: no tokenizer files in {p} (looked for tokenizer.json, tokenizer.model, "
                           "tokenizer_config.json)")
        return out

    def check(self) -> None:
        """Raise one ``FileNotFoundError`` naming every missing path."""
        problems = self.problems()
        if problems:
            raise FileNotFoundError("published SEED-X files missing:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- configs

@dataclass
class PublishedConfigs:
    """The numbers the published YAML configs give and no weight file records.

    Field names follow the YAML files: ``visual_encoder`` = ``configs/visual_encoder/qwen_vitg_448.yaml``
    (plus the class defaults ``n_queries`` 256, pool heads ``output_dim // 128``); ``agent`` =
    ``configs/clm_models/agent_seed_x.yaml``; ``sdxl_adapter`` = the ``resampler`` block of
    ``configs/sdxl_adapter/sdxl_qwen_vit_resampler_l4_q64_pretrain_no_normalize.yaml``; ``pipeline`` =
    constants of ``src/inference/*.py`` (448-pixel tiles, 1024-pixel images, 50 steps, guidance 7.5, and
    the guidance negative of ``SDXLAdapter``: the ViT of an all-zero image). A written ``seedx_lab.json``
    never records ``pipeline.negative`` (a layout draws as the published code does); one added by hand
    (``"zeros"``) is honoured.
    """

    visual_encoder: dict = field(default_factory=dict)
    agent: dict = field(default_factory=dict)
    sdxl_adapter: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)

    @classmethod
    def published(cls) -> "PublishedConfigs":
        vit = asdict(ViTConfig.published())
        return cls(
            visual_encoder=vit,
            agent=dict(input_resampler=dict(grid_size=8, embed_dim=5120, num_heads=32, kv_dim=4096),
                       output_resampler=dict(grid_size=8, embed_dim=4096, num_heads=32, kv_dim=5120),
                       add_patch_pos=True, vit_down=True, mse=True, lm_loss_scale=1.0, rec_loss_scale=6.0),
            sdxl_adapter=dict(dim=1024, depth=4, dim_head=64, heads=16, num_queries=64, embedding_dim=4096,
                              output1_dim=768, output2_dim=1280, ff_mult=4, normalize=False),
            pipeline=dict(tile_size=448, image_size=1024, num_inference_steps=50, guidance_scale=7.5,
                          negative="vit_zero_image"),
        )

    @classmethod
    def from_model(cls, model: SeedX) -> "PublishedConfigs":
        """The configs of a seedx_lab model, in the published field names."""
        c = model.config
        def rc(r):
            out = dict(grid_size=r.config.grid_size, embed_dim=r.config.embed_dim, num_heads=r.config.num_heads,
                       kv_dim=r.config.kv_dim, ln_eps=r.config.ln_eps)
            if r.config.locality:             # seedx-tiny's place bias (no published YAML has one)
                out.update(locality=r.config.locality, local_heads=r.config.local_heads)
            return out
        lv = model.lvlm
        d = c.detok
        return cls(
            visual_encoder=asdict(c.vit),
            agent=dict(input_resampler=rc(lv.input_resampler), output_resampler=rc(lv.output_resampler),
                       add_patch_pos=lv.add_patch_pos, vit_down=lv.vit_down, mse=lv.mse,
                       lm_loss_scale=lv.lm_loss_scale, rec_loss_scale=lv.rec_loss_scale, target_pool=lv.target_pool),
            sdxl_adapter=dict(dim=d.dim, depth=d.depth, dim_head=d.dim_head, heads=d.heads, num_queries=d.num_queries,
                              embedding_dim=d.embedding_dim, output1_dim=d.output1_dim, output2_dim=d.output2_dim,
                              ff_mult=d.ff_mult, normalize=d.normalize),
            pipeline=dict(tile_size=c.tile_size, image_size=d.image_size, num_inference_steps=c.num_inference_steps,
                          guidance_scale=c.guidance_scale),
        )

    @classmethod
    def for_root(cls, root: Path | None) -> "PublishedConfigs":
        """``root/seedx_lab.json`` when it exists (each section replaces the published one), else the published configs."""
        cfg = cls.published()
        f = Path(root) / CONFIG_FILE if root is not None else None
        if f is None or not f.is_file():
            return cfg
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from None
        unknown = sorted(set(data) - {"visual_encoder", "agent", "sdxl_adapter", "pipeline"})
        if unknown:
            raise ValueError(f"{f}: unknown section(s) {unknown}")
        for k, v in data.items():
            setattr(cfg, k, dict(v))
        negative = cfg.pipeline.get("negative", "vit_zero_image")
        if negative not in NEGATIVES:
            raise ValueError(f"{f}: pipeline.negative must be one of {NEGATIVES}, got {negative!r}")
        return cfg

    def vit_config(self) -> ViTConfig:
        known = {f for f in ViTConfig.__dataclass_fields__}
        return ViTConfig(**{k: v for k, v in self.visual_encoder.items() if k in known})

    def resampler_config(self, which: str) -> ResamplerConfig:
        try:
            return ResamplerConfig(**self.agent[which])
        except (KeyError, TypeError) as e:
            raise ValueError(f"agent config: {which} is missing or has an unknown field: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else is a ``ValueError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _diffusers_config(path: Path, cls) -> dict:
    """A diffusers ``config.json`` reduced to the arguments ``cls.__init__`` takes."""
    data = _read_json(path)
    params = inspect.signature(cls.__init__).parameters
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in params}


def _llm_config(llm_dir: Path) -> LLMConfig:
    data = _read_json(llm_dir / "config.json")
    rope = data.get("rope_theta", (data.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    try:
        return LLMConfig(vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
                         intermediate_size=data["intermediate_size"], num_hidden_layers=data["num_hidden_layers"],
                         num_attention_heads=data["num_attention_heads"],
                         num_key_value_heads=data.get("num_key_value_heads"),
                         max_position_embeddings=data.get("max_position_embeddings", 4096),
                         rms_norm_eps=data.get("rms_norm_eps", 1e-5), rope_theta=rope)
    except KeyError as e:
        raise ValueError(f"{llm_dir / 'config.json'} lacks {e}") from None


# --------------------------------------------------------------------------- state dicts

def read_state_dict(path) -> dict[str, torch.Tensor]:
    """``torch.load`` a ``.bin`` / ``.pt`` state dict on CPU, memory-mapped when the file allows it.

    ``weights_only=True``: plain tensors only, no pickled code. A dict wrapping the state dict under a
    single ``"state_dict"``/``"module"``/``"model"`` key is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):           # old (non-zip) serialisation cannot be mapped: read it whole
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in several types; all mean "not a readable state dict"
        raise ValueError(f"{path} could not be read as a PyTorch state dict (truncated or corrupt?): {e}") from None
    if isinstance(state, dict) and len(state) == 1:
        (key, inner), = state.items()
        if key in ("state_dict", "module", "model") and isinstance(inner, dict):
            state = inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (got {type(state).__name__})")
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _show(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (f", … {len(keys) - n} more" if len(keys) > n else "") + "]"


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], file, what: str,
                     optional: Mapping[str, torch.Size] | None = None) -> None:
    """Compare a checkpoint's keys and shapes with a module's.

    ``expected``: every key must be present; ``optional``: keys that may be present. Anything else is
    unexpected. Raises ``ValueError`` naming ``file``, the missing and unexpected keys, or each shape
    mismatch with both shapes.
    """
    optional = optional or {}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in state if k not in expected and k not in optional)
    if missing or unexpected:
        raise ValueError(f"{file}: keys do not match {what}: missing {len(missing)} key(s) {_show(missing)}; "
                         f"unexpected {len(unexpected)} key(s) {_show(unexpected)}")
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(getattr(s, 'shape', s))}"
           for k, s in {**optional, **expected}.items() if k in state and tuple(state[k].shape) != tuple(getattr(s, "shape", s))]
    if bad:
        raise ValueError(f"{file}: shape mismatch for {len(bad)} key(s) of {what}: " + "; ".join(bad[:6])
                         + (" …" if len(bad) > 6 else ""))
    # an integer tensor where a float belongs would be copied in as is (``_materialise`` casts floats only)
    bad = [f"{k}: file {state[k].dtype} vs model {s.dtype}" for k, s in {**optional, **expected}.items()
           if k in state and isinstance(s, torch.Tensor) and state[k].is_floating_point() != s.is_floating_point()]
    if bad:
        raise ValueError(f"{file}: wrong kind of dtype (float vs integer) for {len(bad)} key(s) of {what}: "
                         + "; ".join(bad[:6]) + (" …" if len(bad) > 6 else ""))


def _shapes(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors (on ``meta``: shapes and dtypes only), what :func:`check_state_dict` compares."""
    return dict(module.state_dict())


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _materialise(module: nn.Module, state: Mapping[str, torch.Tensor], device, dtype: torch.dtype) -> None:
    """Put every tensor of ``state`` into ``module`` (built on ``meta`` or not) on ``device`` in ``dtype``.

    One tensor at a time, so no second copy of the whole module is ever held. A tensor that would stay
    on the CPU in its file dtype is cloned, so the module never aliases the memory-mapped file.
    """
    from accelerate.utils import set_module_tensor_to_device

    on_cpu = torch.device(device).type == "cpu"
    for name, value in state.items():
        cast = dtype if value.is_floating_point() else None
        if on_cpu and (cast is None or value.dtype == cast):
            value = value.clone()
        set_module_tensor_to_device(module, name, device, value=value, dtype=cast, **_no_cache_clearing())


def _no_cache_clearing() -> dict:
    """``clear_cache=False`` where accelerate has it (emptying the CUDA cache per tensor is slow)."""
    from accelerate.utils import set_module_tensor_to_device

    return {"clear_cache": False} if "clear_cache" in inspect.signature(set_module_tensor_to_device).parameters else {}


@torch.no_grad()
def _own_memory(module: nn.Module) -> None:
    """Copy every tensor of a CPU module into memory of its own.

    A module whose tensors point into memory-mapped weight files would change or crash (SIGBUS) if a
    file were rewritten, and unaligned mapped tensors take other CPU kernels than aligned ones (results
    then differ in the last bit from the same weights loaded any other way).
    """
    for t in list(module.parameters()) + list(module.buffers()):
        t.data = t.data.clone()


def _assert_materialised(module: nn.Module, what: str, skip: str | None = None) -> None:
    """Every tensor of ``module`` (except those under ``skip``, e.g. an offloaded LLM) has real storage."""
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
            if t.is_meta and not (skip and n.startswith(skip))]
    if left:
        raise RuntimeError(f"{what}: {len(left)} tensor(s) were never loaded: {_show(left)}")


# --------------------------------------------------------------------------- parts

def load_published_tokenizer(path, vocab_size: int | None = None):
    """The SEED-X tokenizer folder (LLaMA tokenizer + ``<img>``, ``<img_00000>``…, ``<patch>`` …).

    A tokenizer without a pad token gets ``<unk>`` as pad (batched generation needs one).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    no_code_folder(path)                        # auto_map / .py: refused before transformers could ask to run it
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ValueError(f"could not read the tokenizer in {path}: {e} "
                         "(a LLaMA tokenizer.model without tokenizer.json needs `pip install sentencepiece protobuf`)") from e
    T.ImageTokenIds.from_tokenizer(tok)                     # ValueError when the SEED-X tokens are missing
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token
    if vocab_size is not None and len(tok) > vocab_size:
        raise ValueError(f"tokenizer in {path} has {len(tok)} tokens but the LLM vocabulary is {vocab_size}")
    return tok


def load_vit(path, config: ViTConfig, device="cpu", dtype=torch.float32,
             state: Mapping[str, torch.Tensor] | None = None) -> VisionTransformer:
    """``qwen_vit_G.pt`` -> :class:`VisionTransformer` (keys checked exactly)."""
    state = read_state_dict(path) if state is None else state
    vit = VisionTransformer(config, device="meta")
    check_state_dict(state, _shapes(vit), path, "the Qwen-VL visual encoder (VisionTransformer)")
    _materialise(vit, state, device, dtype)
    _assert_materialised(vit, str(path))
    return vit.eval()


def load_llm(path, device="cpu", dtype=torch.float32, device_map=None):
    """The HF LLaMA folder through ``LlamaForCausalLM.from_pretrained`` (transformers 5: ``dtype=``).

    ``device_map``: passed through (``"auto"`` spreads the layers over the free GPU memory); None puts
    the whole LLM on ``device``. Missing, unexpected or mis-shaped weights raise ``ValueError``
    (transformers itself would only warn and initialise them randomly).
    """
    from transformers import LlamaForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found (expected a Hugging Face LLaMA folder)")
    kwargs = dict(local_files_only=True, dtype=dtype, output_loading_info=True)
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    try:
        llm, info = LlamaForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:     # e.g. a truncated model.safetensors
        raise ValueError(f"{path}: could not load the LLaMA weights: {_first_line(e)}") from e
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    mismatched = [str(m) for m in info.get("mismatched_keys", ())]
    if missing or unexpected or mismatched:
        raise ValueError(f"{path}: LLaMA weights do not match its config.json: missing {_show(missing)}, "
                         f"unexpected {_show(unexpected)}, shape mismatch {_show(mismatched)}")
    if device_map is None and torch.device(device).type == "cpu":   # from_pretrained maps CPU weights from the file
        _own_memory(llm)
    return llm.eval()


def _build_agent(llm, token_ids, configs: PublishedConfigs, device) -> ContinuousLVLM:
    a = configs.agent
    rin = Resampler(configs.resampler_config("input_resampler"), device=device)
    rout = Resampler(configs.resampler_config("output_resampler"), device=device)
    return ContinuousLVLM(llm, rin, rout, token_ids, lm_loss_scale=a.get("lm_loss_scale", 1.0),
                          rec_loss_scale=a.get("rec_loss_scale", 6.0), add_patch_pos=a.get("add_patch_pos", True),
                          vit_down=a.get("vit_down", True), mse=a.get("mse", True),
                          target_pool=a.get("target_pool", "1d"), device=device)


# --------------------------------------------------------------------------- llm.* keys of an agent file

# How peft names the weights of a LoRA-wrapped LLM (the published llm_seed_x_lora.yaml training recipe:
# get_peft_model on LlamaForCausalLM, so the agent's keys read llm.base_model.model.<LLaMA name>):
#   <module>.base_layer.weight           the frozen weight W of a wrapped Linear
#   <module>.lora_A.<adapter>.weight     A [r, in]
#   <module>.lora_B.<adapter>.weight     B [out, r]        merged: W + (B @ A) * scaling
#   <module>.modules_to_save.<adapter>.weight   a trained copy (the recipe's norms) that replaces ...
#   <module>.original_module.weight             ... the frozen original, which is dropped
_PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_SAVED = re.compile(r"^(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<param>weight|bias)$")
_ORIGINAL = re.compile(r"^(?P<module>.+)\.original_module\.(?P<param>weight|bias)$")
_BASE = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>weight|bias)$")
ADAPTER_CONFIG = "adapter_config.json"       # peft's file; looked for next to the agent file
_MERGE_HINT = ("merge them into the LLM with peft first (PeftModel.from_pretrained(llm, adapter_folder)"
               ".merge_and_unload(), then save_pretrained into the llm/ folder) and keep only the resamplers and "
               "patch_pos_embed in the agent file, or put peft's adapter_config.json (r, lora_alpha) next to "
               "the agent file so the loader can merge them")


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """LLaMA's rotary frequencies ``1 / theta^(2i / head_dim)``, ``[head_dim // 2]`` float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


@dataclass
class AgentLLM:
    """The ``llm.*`` part of an agent file, sorted (see :func:`read_agent_llm`).

    ``weights``: LLaMA state-dict name -> tensor (peft wrappers unwrapped); ``lora``: module name ->
    ``(A [r, in], B [out, r])``; ``scaling``: ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA);
    ``skipped``: file keys not loaded (checked rotary buffers, peft's frozen originals)."""

    weights: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)
    scaling: float | None = None
    skipped: list = field(default_factory=list)

    def merged(self, current: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` plus each LoRA module merged: ``W + (B @ A) * scaling`` in float32, where ``W`` is the
        file's ``base_layer`` weight or else ``current(name)`` (the LLM folder's)."""
        out = dict(self.weights)
        for module, (a, b) in self.lora.items():
            name = module + ".weight"
            w = out[name] if name in out else current(name)
            out[name] = w.float().cpu() + (b.float() @ a.float()) * self.scaling
        return out


def _lora_scaling(path: Path, ranks: set[int]) -> float:
    cfg_file = path.parent / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise ValueError(f"{path} holds LoRA weights (lora_A / lora_B, from training with llm_seed_x_lora.yaml) "
                         f"and there is no {cfg_file} to say their scaling: {_MERGE_HINT}")
    try:
        cfg = json.loads(cfg_file.read_text())
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: needs numbers 'r' and 'lora_alpha' ({e})") from None
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{cfg_file}: per-module rank_pattern / alpha_pattern are not supported: {_MERGE_HINT}")
    if ranks != {r}:
        raise ValueError(f"{cfg_file} says r={r} but the LoRA weights in {path} have rank(s) {sorted(ranks)}")
    return alpha / (r ** 0.5 if cfg.get("use_rslora") else r)


def read_agent_llm(state: Mapping[str, torch.Tensor], path, llm_shapes: Mapping[str, torch.Size], head_dim: int,
                   rope_theta: float) -> AgentLLM:
    """Sort an agent file's ``llm.*`` keys as the published loader would use them, checking everything.

    * ``llm.<LLaMA name>`` (a file saved from the whole agent): a weight of the LLM; it overwrites the
      LLM folder's, as in the published load order (the folder is loaded first, the agent on top);
    * ``…rotary_emb.inv_freq`` (the published LLaMA class keeps one per layer as a persistent buffer):
      skipped, as transformers recomputes it — but compared with ``1 / theta^(2i/d)`` first;
    * peft names (``llm.base_model.model.…``, ``base_layer``, ``lora_A/B``, ``modules_to_save``,
      ``original_module``): unwrapped; LoRA pairs are merged later with the ``adapter_config.json`` found
      next to the file (without it: an error that says how to merge them with peft).

    Anything else, a shape that does not fit, or a mismatched ``inv_freq`` is a ``ValueError`` naming the
    key and ``path``. ``llm_shapes``: name -> shape (or a tensor, whose shape is used)."""
    path = Path(path)
    llm_shapes = {k: torch.Size(getattr(v, "shape", v)) for k, v in llm_shapes.items()}
    out, unknown, bad, adapters = AgentLLM(), [], [], set()
    lora: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if not key.startswith("llm."):
            continue
        name = key[len("llm."):]
        name = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
        if name.endswith("rotary_emb.inv_freq"):
            want = rope_inv_freq(head_dim, rope_theta)
            tol = torch.finfo(value.dtype).eps if value.is_floating_point() else 0.0
            if tuple(value.shape) != tuple(want.shape) or not torch.allclose(value.float(), want, rtol=2 * tol, atol=0):
                raise ValueError(f"{path}: {key} does not hold the rotary frequencies of this LLM "
                                 f"(head_dim {head_dim}, rope_theta {rope_theta:g}): file {tuple(value.shape)} "
                                 f"starting {value.flatten()[:3].tolist()}, recomputed {tuple(want.shape)} "
                                 f"starting {want[:3].tolist()}")
            out.skipped.append(key)
            continue
        if m := _LORA.match(name):
            lora.setdefault(m["module"], {})[m["ab"]] = (key, value)
            adapters.add(m["adapter"])
            continue
        if _ORIGINAL.match(name):
            out.skipped.append(key)
            continue
        if m := _SAVED.match(name):
            name = f"{m['module']}.{m['param']}"
            adapters.add(m["adapter"])
        elif m := _BASE.match(name):
            name = f"{m['module']}.{m['param']}"
        if name not in llm_shapes:
            unknown.append(key)
        elif tuple(value.shape) != tuple(llm_shapes[name]):
            bad.append(f"{key}: file {tuple(value.shape)} vs model {tuple(llm_shapes[name])}")
        elif name in out.weights:
            raise ValueError(f"{path}: two keys give the LLM weight {name} (one is {key})")
        else:
            out.weights[name] = value
    for module, pair in lora.items():
        target = llm_shapes.get(module + ".weight")
        if set(pair) != {"A", "B"} or target is None:
            unknown += [k for k, _ in pair.values()]
            continue
        (ka, a), (kb, b) = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(target):
            bad.append(f"{ka} {tuple(a.shape)} and {kb} {tuple(b.shape)} do not make a delta of "
                       f"{module}.weight {tuple(target)}")
        out.lora[module] = (a, b)
    if unknown:
        hint = f" (it holds LoRA weights: {_MERGE_HINT})" if lora else ""
        raise ValueError(f"{path}: unexpected {len(unknown)} key(s) {_show(sorted(unknown))}: not a weight of the "
                         f"LLM (LlamaForCausalLM), its rotary inv_freq buffer, or a peft/LoRA name of one{hint}")
    if bad:
        raise ValueError(f"{path}: shape mismatch for {len(bad)} LLM key(s): " + "; ".join(bad[:6]))
    if len(adapters) > 1:
        raise ValueError(f"{path}: weights of {len(adapters)} peft adapters {sorted(adapters)}; merge one first: {_MERGE_HINT}")
    if out.lora:
        out.scaling = _lora_scaling(path, {a.shape[0] for a, _ in out.lora.values()})
    return out


def _check_agent(state, path, configs: PublishedConfigs, token_ids, llm_config: LLMConfig) -> AgentLLM:
    """Keys/shapes of the agent file against a meta-built ContinuousLVLM, and its ``llm.*`` keys against
    the LLM (:func:`read_agent_llm`)."""
    from ..lvlm import build_llm

    own = _build_agent(nn.Identity(), token_ids, configs, "meta")
    check_state_dict({k: v for k, v in state.items() if not k.startswith("llm.")}, _shapes(own), path,
                     "the agent (ContinuousLVLM: input_resampler, output_resampler, patch_pos_embed; llm.* allowed)")
    if not any(k.startswith("llm.") for k in state):
        return AgentLLM()
    c = llm_config
    return read_agent_llm(state, path, _shapes(build_llm(c, device="meta")), c.hidden_size // c.num_attention_heads,
                          c.rope_theta)


def _rope_of(llm) -> tuple[int, float]:
    """(head_dim, rope_theta) of a transformers LLaMA (transformers 5 keeps theta in ``rope_parameters``)."""
    cfg = llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return int(head_dim), float(theta)


def load_agent(path, llm, token_ids: T.ImageTokenIds, configs: PublishedConfigs | None = None, device="cpu",
               dtype=torch.float32, state: Mapping[str, torch.Tensor] | None = None) -> ContinuousLVLM:
    """``agent/pytorch_model.bin`` + an already loaded LLM -> :class:`ContinuousLVLM`.

    ``llm.*`` keys (a file saved from the whole agent, or from the LoRA training recipe) go into the LLM
    in place, on the device each weight already sits on, after :func:`read_agent_llm` has sorted them:
    plain weights overwrite the LLM folder's, LoRA pairs are merged into them, rotary buffers are checked
    and skipped."""
    configs = configs or PublishedConfigs.published()
    path = Path(path)
    state = read_state_dict(path) if state is None else state
    own_state = {k: v for k, v in state.items() if not k.startswith("llm.")}
    lvlm = _build_agent(llm, token_ids, configs, "meta")
    check_state_dict(own_state, {k: s for k, s in _shapes(lvlm).items() if not k.startswith("llm.")}, path,
                     "the agent (ContinuousLVLM: input_resampler, output_resampler, patch_pos_embed; llm.* allowed)")
    part = read_agent_llm(state, path, _shapes(llm), *_rope_of(llm))

    def current(name):
        w = llm.get_parameter(name)
        if w.is_meta:
            raise ValueError(f"{path}: cannot merge LoRA weights into {name}: that weight is offloaded "
                             "(device_map put it off the GPU/CPU)")
        return w.detach()

    _materialise(lvlm, own_state, device, dtype)
    _overlay(llm, part.merged(current), path)
    _assert_materialised(lvlm, str(path), skip="llm.")
    return lvlm.eval()


def _overlay(module: nn.Module, state: Mapping[str, torch.Tensor], path) -> None:
    """Overwrite already-loaded weights of ``module``, each on its own device and dtype."""
    from accelerate.utils import set_module_tensor_to_device

    current = dict(module.named_parameters())
    current.update(module.named_buffers())
    for name, value in state.items():
        old = current[name]
        if old.is_meta:
            raise ValueError(f"{path}: cannot overwrite {name}: that weight is offloaded (device_map put it off the GPU/CPU)")
        set_module_tensor_to_device(module, name, old.device, value=value.clone() if old.device.type == "cpu" else value,
                                    dtype=old.dtype if value.is_floating_point() else None, **_no_cache_clearing())


def _detok_config(sdxl: Path, configs: PublishedConfigs) -> DetokenizerConfig:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    p = configs.pipeline
    unknown = sorted(set(configs.sdxl_adapter) - set(DetokenizerConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"sdxl_adapter config: unknown field(s) {unknown}")
    return DetokenizerConfig(**configs.sdxl_adapter,
                             unet=_diffusers_config(sdxl / "unet" / "config.json", UNet2DConditionModel),
                             vae=_diffusers_config(sdxl / "vae" / "config.json", AutoencoderKL),
                             scheduler=_diffusers_config(sdxl / "scheduler" / "scheduler_config.json", EulerDiscreteScheduler),
                             image_size=p.get("image_size", 1024), num_inference_steps=p.get("num_inference_steps", 50),
                             guidance_scale=p.get("guidance_scale", 7.5), cond_drop_prob=0.0)


def _check_detok(state, path, config: DetokenizerConfig) -> Detokenizer:
    meta = Detokenizer(config, device="meta")
    check_state_dict(state, {"resampler." + k: s for k, s in _shapes(meta.resampler).items()}, path,
                     "the de-tokenizer (SDXLAdapter: resampler.* required, unet.* allowed)",
                     {"unet." + k: s for k, s in _shapes(meta.unet).items()})
    return meta


def load_detokenizer(path, sdxl_dir, configs: PublishedConfigs | None = None, device="cpu", dtype=torch.float32,
                     state: Mapping[str, torch.Tensor] | None = None) -> Detokenizer:
    """De-tokenizer ``.bin`` + SDXL base folder -> :class:`Detokenizer`.

    UNet and VAE come from ``sdxl_dir/{unet,vae}`` (diffusers ``from_pretrained``, the ``fp16`` file
    variant when the dtype is half and only that is there), the scheduler from ``sdxl_dir/scheduler``;
    ``unet.*`` keys of the ``.bin`` then overwrite UNet weights. In float16 a VAE whose config says
    ``force_upcast`` (SDXL's does: it overflows in fp16) stays in float32, as diffusers pipelines do.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    configs = configs or PublishedConfigs.published()
    sdxl = Path(sdxl_dir)
    state = read_state_dict(path) if state is None else state
    detok = _check_detok(state, path, _detok_config(sdxl, configs))

    def weights(sub):
        half = dtype in (torch.float16, torch.bfloat16)
        has_default = any((sdxl / sub / w).is_file() for w in _DIFFUSERS_WEIGHTS if ".fp16." not in w)
        has_fp16 = any((sdxl / sub / w).is_file() for w in _DIFFUSERS_WEIGHTS if ".fp16." in w)
        return "fp16" if has_fp16 and (half or not has_default) else None

    place = dict(device_map=str(device)) if torch.device(device).type != "cpu" else {}

    def read(cls, sub, dt):                  # a corrupt weight file names its folder, not a bare SafetensorError
        try:
            return cls.from_pretrained(str(sdxl), subfolder=sub, torch_dtype=dt, local_files_only=True,
                                       variant=weights(sub), output_loading_info=True, **place)
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            raise ValueError(f"{sdxl / sub}: could not load the weights: {_first_line(e)}") from e

    unet, info = read(UNet2DConditionModel, "unet", dtype)
    _raise_if_incomplete(info, sdxl / "unet")
    vae_dtype = torch.float32 if dtype == torch.float16 and _diffusers_config(
        sdxl / "vae" / "config.json", AutoencoderKL).get("force_upcast", False) else dtype
    vae, info = read(AutoencoderKL, "vae", vae_dtype)
    _raise_if_incomplete(info, sdxl / "vae")
    if torch.device(device).type == "cpu":      # diffusers leaves CPU weights inside the mapped files
        _own_memory(unet)
        _own_memory(vae)
    detok.unet, detok.vae = unet.eval(), vae.eval()
    detok.scheduler = EulerDiscreteScheduler.from_pretrained(str(sdxl), subfolder="scheduler", local_files_only=True)
    _materialise(detok.resampler, _sub(state, "resampler."), device, dtype)
    _overlay(detok.unet, _sub(state, "unet."), path)
    _assert_materialised(detok, str(path))
    return detok.eval()


def _raise_if_incomplete(info: dict, folder: Path) -> None:
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    mismatched = [str(m) for m in info.get("mismatched_keys", ())]
    if missing or unexpected or mismatched:
        raise ValueError(f"{folder}: weights do not match its config.json: missing {_show(missing)}, "
                         f"unexpected {_show(unexpected)}, shape mismatch {_show(mismatched)}")


# --------------------------------------------------------------------------- the whole model

def _default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_published(root=None, device=None, dtype=None, device_map=None, variant: str | None = None,
                   paths: PublishedPaths | None = None, configs: PublishedConfigs | None = None,
                   progress: Callable[[str], None] | None = None) -> SeedX:
    """A published SEED-X (or a layout written by :func:`write_published_layout`) as a :class:`SeedX`.

    ``root``: the ``pretrained/`` folder (default ``$SEEDX_ROOT``); ``paths`` replaces the whole lookup.
    ``device``: where the ViT, resamplers and de-tokenizer go, and the LLM too unless ``device_map`` is
    given (e.g. ``"auto"``; it is handed to ``from_pretrained`` and the LLM is loaded last, so it sees the
    memory the other parts already use). Default: ``"cuda"`` when a ``device_map`` is given and CUDA is
    there, else ``"cpu"``. ``dtype``: default bfloat16 on CUDA, float32 elsewhere.
    ``progress``: called with a line per stage (e.g. ``print``).
    """
    say = progress or (lambda msg: None)
    if device is None:
        device = "cuda" if device_map is not None and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    dtype = dtype or _default_dtype(device)
    paths = paths or PublishedPaths.from_root(root, variant)
    paths.check()
    configs = configs or PublishedConfigs.for_root(paths.root)

    # 1. everything that can fail, before any weight is copied
    say("checking files …")
    llm_config = _llm_config(paths.llm)
    tok = load_published_tokenizer(paths.tokenizer, llm_config.vocab_size)
    token_ids = T.ImageTokenIds.from_tokenizer(tok)
    vit_config = configs.vit_config()
    vit_state = read_state_dict(paths.vit)
    check_state_dict(vit_state, _shapes(VisionTransformer(vit_config, device="meta")), paths.vit,
                     "the Qwen-VL visual encoder (VisionTransformer)")
    agent_state = read_state_dict(paths.agent)
    _check_agent(agent_state, paths.agent, configs, token_ids, llm_config)
    detok_state = read_state_dict(paths.detok)
    detok_config = _detok_config(paths.sdxl, configs)
    _check_detok(detok_state, paths.detok, detok_config)

    # 2. weights: the fixed-placement parts first, the LLM (maybe device_map="auto") last
    say(f"visual encoder {paths.vit} -> {device} {dtype}")
    vit = load_vit(paths.vit, vit_config, device, dtype, state=vit_state)
    say(f"de-tokenizer {paths.detok} + SDXL {paths.sdxl} -> {device} {dtype}")
    detok = load_detokenizer(paths.detok, paths.sdxl, configs, device, dtype, state=detok_state)
    say(f"LLM {paths.llm} -> {device_map or device} {dtype}")
    llm = load_llm(paths.llm, device, dtype, device_map)
    say(f"agent {paths.agent} -> {device} {dtype}")
    lvlm = load_agent(paths.agent, llm, token_ids, configs, device, dtype, state=agent_state)

    a, p = configs.agent, configs.pipeline
    config = SeedXConfig(vit=vit_config, llm=llm_config, detok=detok_config, tile_size=p.get("tile_size", 448),
                         resampler_heads=a["input_resampler"]["num_heads"], add_patch_pos=a.get("add_patch_pos", True),
                         target_pool=a.get("target_pool", "1d"), lm_loss_scale=a.get("lm_loss_scale", 1.0),
                         rec_loss_scale=a.get("rec_loss_scale", 6.0),
                         num_inference_steps=p.get("num_inference_steps", 50), guidance_scale=p.get("guidance_scale", 7.5),
                         input_locality=lvlm.input_resampler.config.locality,
                         input_local_heads=lvlm.input_resampler.config.local_heads,
                         negative=p.get("negative", "vit_zero_image"))
    say("done")
    return SeedX(config, tok, vit=vit, lvlm=lvlm, detok=detok).eval()


# --------------------------------------------------------------------------- writing the layout

def _cpu_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def write_published_layout(model: SeedX, root, variant: str = "seed_x") -> PublishedPaths:
    """Write ``model`` as the published release is laid out: same folders, file names and keys.

    LLM via ``save_pretrained`` into ``VARIANT/llm``; agent (resamplers + ``patch_pos_embed``) and
    de-tokenizer (``resampler.*`` + ``unet.*``) ``.bin`` and the ViT ``.pt`` via ``torch.save``; UNet, VAE
    and scheduler as diffusers folders; the tokenizer folder; and ``seedx_lab.json`` with the configs no
    weight file records. Returns the paths.

    Atomic per layout: everything is written into a temporary folder inside ``root`` first; only when all of
    it is complete are its top-level entries swapped in for the old ones (a few renames). A failure while
    writing leaves a layout already in ``root`` as it was (no new LLM beside old parts), and no temporary.
    """
    import shutil
    import tempfile

    from ..validate import output_folder

    if variant not in VARIANTS:
        raise ValueError(f"unknown SEED-X variant {variant!r}; expected one of {VARIANTS}")
    root = output_folder("to_published", root)
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".seedx-convert-", suffix=".tmp", dir=root))
    try:
        _write_layout(model, stage, variant)
        _swap_in(stage, root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return PublishedPaths.from_root(root, variant, env={})


def _write_layout(model: SeedX, root: Path, variant: str) -> None:
    paths = PublishedPaths.from_root(root, variant, env={})
    for d in (paths.llm, paths.agent.parent, paths.vit.parent, paths.detok.parent, paths.sdxl, paths.tokenizer):
        d.mkdir(parents=True, exist_ok=True)
    model.lvlm.llm.save_pretrained(paths.llm)
    agent = {k: v for k, v in _cpu_state(model.lvlm).items() if not k.startswith("llm.")}
    torch.save(agent, paths.agent)
    torch.save(_cpu_state(model.vit), paths.vit)
    detok = model.detok
    torch.save({**_cpu_state(detok.resampler, "resampler."), **_cpu_state(detok.unet, "unet.")}, paths.detok)
    detok.unet.save_pretrained(paths.sdxl / "unet")
    detok.vae.save_pretrained(paths.sdxl / "vae")
    detok.scheduler.save_pretrained(paths.sdxl / "scheduler")
    model.tokenizer.save_pretrained(paths.tokenizer)
    (root / CONFIG_FILE).write_text(json.dumps(PublishedConfigs.from_model(model).to_dict(), indent=2))


def _swap_in(stage: Path, root: Path) -> None:
    """Move each top-level entry of ``stage`` into ``root``, replacing the old one; on a failure part-way,
    every entry already swapped is put back."""
    import shutil
    import tempfile

    old = Path(tempfile.mkdtemp(prefix=".seedx-old-", suffix=".tmp", dir=root))
    moved: list[tuple[Path, Path | None]] = []                # (new entry in root, old one parked in ``old``)
    try:
        for entry in sorted(stage.iterdir()):
            target, parked = root / entry.name, None
            if target.exists() or target.is_symlink():
                parked = old / entry.name
                os.replace(target, parked)
            moved.append((target, parked))
            os.replace(entry, target)
    except BaseException:
        for target, parked in reversed(moved):
            if target.is_dir() and not target.is_symlink():          # the new entry, if it got there
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if parked is not None and parked.exists():
                os.replace(parked, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- helpers for the real model

# Prompt formats of the published inference scripts (src/inference/eval_{text2img,img2text}_seed_x{,_i}.py).
# ``{image}`` is where the image blocks go (tiles as <patch>…</patch>, then the global <img>…</img>).
# SEED-X-I's generation prompt does not end in <img>: the model has to predict it.
PROMPTS = {
    "seed_x": {"generate": "{caption}<img>", "describe": "Question: {image}{question}\nAnswer:"},
    "seed_x_i": {"generate": "[INST] Generate an image: {caption} [/INST]\n", "describe": "[INST] {image}{question} [/INST]\n"},
}


def published_prompt(variant: str, task: str, text: str, image_tokens: str = "") -> str:
    """The prompt a published script builds for ``task`` (``"generate"`` or ``"describe"``)."""
    if variant not in PROMPTS:
        raise ValueError(f"unknown SEED-X variant {variant!r}; expected one of {tuple(PROMPTS)}")
    if task not in PROMPTS[variant]:
        raise ValueError(f"task must be 'generate' or 'describe', got {task!r}")
    if task == "generate":
        return PROMPTS[variant][task].format(caption=text)
    return PROMPTS[variant][task].format(image=image_tokens, question=text)


@torch.no_grad()
def published_negative_features(model: SeedX) -> torch.Tensor:
    """The de-tokenizer's unconditional input as published: ViT features of an all-zero (normalised)
    image, 1-D pooled 256 -> 64 (``SDXLAdapter.get_image_embeds`` with ``vit_down``). ``[1, 64, D]``.

    Computed afresh, whatever ``model.config.negative`` says; a model loaded by :func:`load_published`
    uses it by default (``config.negative == "vit_zero_image"``, cached: :meth:`SeedX.negative_features`)."""
    s = model.config.vit.image_size
    zeros = torch.zeros(1, 3, s, s, device=model.device, dtype=model.dtype)
    return pool_targets(model.vit(zeros), "1d", model.lvlm.num_out_features)


def parameter_counts(configs: PublishedConfigs | None = None, llm: LLMConfig | None = None,
                     detok: DetokenizerConfig | None = None) -> dict[str, int]:
    """Parameters of each part, counted on modules built on the ``meta`` device (nothing is allocated).

    Defaults: the published SEED-X (LLaMA-2-13B with 32330 tokens, Qwen-VL ViT-G, SDXL)."""
    from ..lvlm import build_llm

    configs = configs or PublishedConfigs.published()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    d = Detokenizer(detok or DetokenizerConfig.published(), device="meta")
    return {
        "llm": count(build_llm(llm or LLMConfig.published(), device="meta")),
        "vit": count(VisionTransformer(configs.vit_config(), device="meta")),
        "input_resampler": count(Resampler(configs.resampler_config("input_resampler"), device="meta")),
        "output_resampler": count(Resampler(configs.resampler_config("output_resampler"), device="meta")),
        "detok_resampler": count(d.resampler),
        "unet": count(d.unet),
        "vae": count(d.vae),
    }
