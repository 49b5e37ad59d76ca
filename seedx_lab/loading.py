"""Find and load a saved model: seedx-tiny and other seedx-lab folders, or the published SEED-X layout.

Kept apart from :mod:`seedx_lab.model` so that the model class does not import the published-layout
loaders (which build a :class:`~seedx_lab.model.SeedX` themselves).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import tokens as T
from . import validate as V
from .model import SeedX, SeedXConfig

DATA_DIR = Path(os.environ.get("SEEDX_LAB_DATA", Path(__file__).resolve().parent.parent / "data"))


def resolve(name_or_path) -> Path:
    """``"seedx-tiny"`` -> ``data/seedx-tiny``; a path is returned as it is (after an existence check)."""
    p = Path(name_or_path)
    if not p.exists() and (DATA_DIR / str(name_or_path)).exists():
        p = DATA_DIR / str(name_or_path)
    if not p.exists():
        raise FileNotFoundError(f"no model named or found at {name_or_path!r} (looked in {DATA_DIR})")
    return p


def load(name_or_path="seedx-tiny", device=None, dtype=None, device_map=None) -> SeedX:
    """Load a saved SeedX (seedx-tiny by default) onto ``device`` in ``dtype``.

    A folder in the published SEED-X layout (``pretrained/`` with ``seed_x/agent/pytorch_model.bin`` …),
    or the names ``"seed-x"`` / ``"seed-x-i"`` (files under ``$SEEDX_ROOT``), go to
    :func:`seedx_lab.checkpoints.load_published`; ``device_map`` (e.g. ``"auto"``) applies to those only.
    A folder whose ``config.json`` says ``"arch": "chameleon-tiny"`` is the Type-A arm and loads as a
    :class:`seedx_lab.typea.model.ChameleonTiny`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .published import checkpoints

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise V.BadType(f"name_or_path must be a model name or a folder path, got {V._show(name_or_path)}")
    if device is not None:
        device = V.device("device", device)     # "cuda" without a GPU: said here, not as an AssertionError
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise V.BadType(f"dtype must be a torch.dtype such as torch.float32, got {V._show(dtype)}")
    variant = checkpoints.variant_for_name(name_or_path)
    if variant is not None or checkpoints.is_published_layout(name_or_path):
        return checkpoints.load_published(None if variant else name_or_path, device=device, dtype=dtype,
                                          device_map=device_map, variant=variant)
    if device_map is not None:
        raise ValueError("device_map applies to published SEED-X checkpoints only; "
                         f"{name_or_path!r} is a seedx-lab model (use device=)")
    d = resolve(name_or_path)
    if not d.is_dir():
        raise ValueError(f"{d} is a file; a seedx-lab model is a folder with config.json, model.safetensors "
                         "and tokenizer.json")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d} has no {f}")
    cfg_file = d / "config.json"
    if _arch(cfg_file) == "chameleon-tiny":           # the Type-A arm (seedx_lab.typea)
        from .typea.model import ChameleonTiny

        return ChameleonTiny.load(d, device=device, dtype=dtype)
    try:
        cfg = SeedXConfig.from_dict(json.loads(cfg_file.read_text()), strict=True)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    except ValueError as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    tok = T.load_tokenizer(d)
    try:
        model = SeedX(cfg, tok)   # tiny: a real init is cheap and keeps non-persistent buffers right
    except ValueError as e:       # e.g. a tokenizer larger than llm.vocab_size
        raise ValueError(f"{d / 'tokenizer.json'} does not fit {cfg_file}: {e}") from None
    try:
        state = load_file(str(d / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{d / 'model.safetensors'} could not be read (truncated or corrupt?): {e}") from None
    weights = d / "model.safetensors"
    expected = model.state_dict()
    # torch copies integers or booleans into float parameters without a word: refuse those first
    bad = [f"{k}: file {v.dtype} vs model {expected[k].dtype}" for k, v in state.items() if k in expected and
           (v.is_floating_point() != expected[k].is_floating_point() or (v.dtype == torch.bool) != (expected[k].dtype == torch.bool))]
    if bad:
        raise ValueError(f"{weights}: wrong kind of dtype (float vs integer) for " + "; ".join(bad[:5]))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:                        # NaN weights would make every output empty or black, silently
        raise ValueError(f"{weights}: NaN or infinite values in {len(bad)} tensor(s): "
                         + ", ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:        # torch's own report: one "size mismatch for <key>: ..." line per key
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        raise ValueError(f"{weights}: " + "; ".join(lines[:5]) + (" …" if len(lines) > 5 else "")) from None
    missing, unexpected = result.missing_keys, result.unexpected_keys     # what strict=True would refuse
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}, "
                         f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    model.detok.vae.register_to_config(scaling_factor=cfg.detok.vae.get("scaling_factor", 1.0))
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


def _arch(cfg_file: Path) -> str | None:
    """The ``arch`` entry of a saved config (None for seedx-tiny's, which has none, or unreadable JSON)."""
    try:
        d = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return d.get("arch") if isinstance(d, dict) else None
