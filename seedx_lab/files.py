"""Writing files so that an interrupted write leaves nothing half-done."""
from __future__ import annotations

import os
from pathlib import Path


def stage_file(path: Path, write) -> tuple[Path, Path]:
    """Write ``path`` as ``path.tmp`` (removed again if ``write`` fails); return ``(tmp, path)``.

    The caller renames ``tmp`` over ``path`` once everything it stages is complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, path


def atomic_write(path: Path, write) -> None:
    """Write one file atomically: ``write(tmp)``, then rename over ``path``; nothing is left on failure."""
    tmp, path = stage_file(path, write)
    os.replace(tmp, path)
