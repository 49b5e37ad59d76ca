"""seedx-lab: the SEED-X pipeline rebuilt stage by stage, small enough to look inside.

The stages, in pipeline order (one module each): ``anyres`` (tiling) → ``vit`` → ``resampler``
(input) → ``lvlm`` (LLaMA with image blocks; ``tokens``, ``sequences``, ``generation``) →
``resampler`` (output) → ``detokenizer``; ``model.SeedX`` holds them all. Around them: ``lab``
(trace, probes, widgets), ``shapeworld`` (the synthetic world, the pixel judge, evaluation),
``training`` and ``published`` (the published SEED-X checkpoint layout).

What users touch is re-exported here, imported lazily so ``import seedx_lab`` stays fast:
``load``, ``trace`` (callable module), ``probes``, ``widgets``, ``world``, ``judge``, ``evaluate``.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load": ("seedx_lab.loading", "load"),
    "trace": ("seedx_lab.lab.trace", None),      # the module itself: callable, and has estimate_bytes
    "probes": ("seedx_lab.lab.probes", None),
    "widgets": ("seedx_lab.lab.widgets", None),
    "world": ("seedx_lab.shapeworld.world", None),
    "judge": ("seedx_lab.shapeworld.judge", None),
    "evaluate": ("seedx_lab.shapeworld.evaluate", None),
}


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(import_module(mod), attr) if attr else import_module(mod)
    raise AttributeError(f"module 'seedx_lab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
