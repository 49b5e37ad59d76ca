"""One check per kind of value, applied once at the public entry points.

``SeedX`` methods, ``load`` and the published loaders, ``trace``, the widgets and the CLI call these
helpers on what a user hands them; the layers below trust the result. Every refusal is a ``TypeError``
(wrong kind of value), ``ValueError`` (right kind, not allowed) or ``FileNotFoundError``, and its message
names the parameter, the value and what is allowed, e.g.::

    seed must be an int in [0, 2**64 - 1], got 1.5 (float)

Each helper returns the value in its canonical form (``int``, ``float``, ``Path``, ``torch.device``).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import stat
from dataclasses import fields
from pathlib import Path

SEED_MAX = 2 ** 64 - 1                 # torch.Generator.manual_seed takes 64-bit seeds
MAX_TILE_BASE = 4096                   # tile side in pixels (448 published, 64 seedx-tiny)
MAX_TILE_PIXELS = 16 * 1024 * 1024     # pixels of the resized image cut into tiles (4 tiles of 2048^2; 448: 0.8 M)
MAX_GUIDANCE = 100.0                   # classifier-free guidance scales beyond this only saturate the image


class BadType(TypeError, ValueError):
    """A value of the wrong kind. Both a ``TypeError`` and a ``ValueError``, so code that caught the
    ``ValueError`` these checks raised before keeps working."""


def _show(value) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name: str, value, low: int | None = None, high: int | None = None, allow_none: bool = False):
    """An int (numpy ints too; not a bool, float or str) in ``[low, high]``."""
    if value is None and allow_none:
        return None
    span = "" if low is None and high is None else \
        f" >= {low}" if high is None else f" in [{'-inf' if low is None else low}, {high}]"
    what = f"an int{span}" + (" or None" if allow_none else "")
    if not _is_int(value):
        raise BadType(f"{name} must be {what}, got {_show(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def positive_int(name: str, value, high: int | None = None, allow_none: bool = False):
    """An int >= 1 (and <= ``high``)."""
    return integer(name, value, 1, high, allow_none)


def number(name: str, value, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, allow_none: bool = False):
    """A finite real number (int or float, not a bool or str) in the interval given; returned as float."""
    if value is None and allow_none:
        return None
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    what = f"a finite number in {lo}, {hi}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadType(f"{name} must be {what}, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low))) \
            or (high is not None and (value > high or (high_open and value == high))):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def seed(name: str, value, allow_none: bool = True):
    """A generator seed: an int in ``[0, 2**64 - 1]`` (not a bool, float or str), or None when allowed."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise BadType(f"{name} must be an int in [0, 2**64 - 1]{' or None' if allow_none else ''}, got {_show(value)}")
    if not 0 <= int(value) <= SEED_MAX:
        raise ValueError(f"{name} must be an int in [0, 2**64 - 1], got {int(value)}")
    return int(value)


def text(name: str, value, allow_empty: bool = False) -> str:
    """A ``str`` that encodes as UTF-8 (no lone surrogates), not blank unless allowed."""
    if not isinstance(value, str):
        raise BadType(f"{name} must be a string, got {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate {value[e.start]!r} at position {e.start}: "
                         "only valid Unicode text is allowed") from None
    if not allow_empty and not value.strip():
        raise ValueError(f"{name} is empty: a non-blank str is needed")
    return value


def choice(name: str, value, allowed):
    """One of ``allowed``."""
    if value not in tuple(allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {_show(value)}")
    return value


def device(name: str, value):
    """A ``torch.device`` (or its name) that this machine has: ``"cuda"`` needs a visible GPU."""
    import torch

    if value is None:
        return torch.device("cpu")
    if not isinstance(value, (str, torch.device)):
        raise BadType(f"{name} must be a device name such as 'cpu' or 'cuda', got {_show(value)}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{name} {value!r} is not a device name ('cpu', 'cuda', 'cuda:1', 'mps' ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {value!r} but no CUDA GPU is visible to PyTorch "
                             f"(torch {torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {value!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name} is {value!r} but the MPS backend is not available here; use 'cpu'")
    return dev


def path_like(name: str, value) -> Path:
    """A non-empty ``str`` or ``os.PathLike`` (nothing about the file system is checked)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise BadType(f"{name} must be a non-empty path (str or os.PathLike), got {_show(value)}")
    return Path(text(name, os.fspath(value)))


def regular_file(name: str, path) -> Path:
    """An existing regular file; folders, FIFOs, sockets and devices are refused before anything is read
    (reading a FIFO would block forever)."""
    p = path_like(name, path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: file not found: {p}") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{name}: {p} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ValueError(f"{name}: {p} is {kind}, not a regular file")
    return p


def flag(name: str, value) -> bool:
    """A real ``bool`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise BadType(f"{name} must be True or False, got {_show(value)}")
    return value


def config_types(cls, data: dict, where: str = "") -> None:
    """Check each value of ``data`` against the annotation of its field in the dataclass ``cls``
    (``int``, ``float``, ``bool``, ``str``, ``dict``, each maybe ``| None``); ``where`` prefixes the names
    (``"llm."``). A number must be finite; other annotations are left to the class."""
    for f in fields(cls):
        if f.name not in data:
            continue
        kind, value, name = str(f.type), data[f.name], where + f.name
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        if value is None and optional:
            continue
        if kind == "int":
            integer(name, value)
        elif kind == "float":
            number(name, value)
        elif kind == "bool":
            flag(name, value)
        elif kind == "str":
            text(name, value, allow_empty=True)
        elif kind == "dict" and not isinstance(value, dict):
            raise BadType(f"{name} must be an object (dict), got {_show(value)}")


def tile_base(name: str, value) -> int:
    """A tile side in pixels: an int in [1, MAX_TILE_BASE] (checked before anything is allocated)."""
    return integer(name, value, 1, MAX_TILE_BASE)


def tile_grid(name: str, width: int, height: int) -> None:
    """The resized image a grid of tiles is cut from must stay under MAX_TILE_PIXELS."""
    if width * height > MAX_TILE_PIXELS:
        raise ValueError(f"{name}: a {width}x{height} tiling canvas ({width * height:,} pixels) is over the limit "
                         f"of {MAX_TILE_PIXELS:,} pixels; use a smaller base")


def guidance(name: str, value, allow_none: bool = True):
    """Classifier-free guidance scale, a finite number in [0, MAX_GUIDANCE].

    As in diffusers, a scale <= 1 switches guidance off (the conditional prediction alone; no
    unconditional branch is run), and s > 1 extrapolates ``uncond + s * (cond - uncond)``."""
    return number(name, value, 0.0, MAX_GUIDANCE, allow_none=allow_none)


def byte_limit(name: str, value):
    """A memory budget in bytes: a positive finite number, or None for no limit."""
    return number(name, value, 0.0, None, low_open=True, allow_none=True)


def output_folder(name: str, path) -> Path:
    """A folder that can be written: not an existing file, and it or its nearest existing parent writable."""
    p = path_like(name, path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: {p} is a file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name}: {p} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: {p} cannot be written: no write permission on {probe}")
    return p


def no_code_folder(folder) -> None:
    """Refuse a tokenizer/model folder that would make transformers run code from it: a ``.py`` file, or
    an ``auto_map`` entry in ``tokenizer_config.json`` / ``config.json`` (``trust_remote_code`` classes).
    The ``ValueError`` names the file; nothing is asked, nothing is imported."""
    folder = Path(folder)
    py = sorted(folder.glob("*.py"))
    if py:
        raise ValueError(f"{py[0]}: a model folder with Python files is refused (their code would run on "
                         "loading); seedx-lab never loads code from a folder — remove the .py files")
    for name in ("tokenizer_config.json", "config.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise ValueError(f"{f} has an 'auto_map' entry (custom code classes, trust_remote_code): refused; "
                             "seedx-lab never runs code from a model folder")
