"""seedx-lab: the SEED-X pipeline rebuilt stage by stage, small enough to look inside.

Stages (one module each): ``anyres`` (tiling) → ``vit`` → ``resampler`` (input) → ``lvlm``
(LLaMA + image blocks, ``tokens``, ``generation``) → ``resampler`` (output) → ``detokenizer``.
Heavy modules are imported lazily so ``import seedx_lab`` stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load": ("seedx_lab.model", "load"),
    "trace": ("seedx_lab.trace", None),      # the module itself: callable, and has estimate_bytes
}


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(import_module(mod), attr) if attr else import_module(mod)
    raise AttributeError(f"module 'seedx_lab' has no attribute {name!r}")
