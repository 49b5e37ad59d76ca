"""Exercise copies of the notebooks: every solution replaced by a stub.

A solution sits inside a function body between two marker lines::

    def choose_grid(size, base):
        # BEGIN SOLUTION: the grid choice
        ...
        # END SOLUTION

:func:`stub_solutions` replaces the markers and everything between them by
``raise NotImplementedError("exercise: the grid choice")`` at the marker's indentation, so the function
still exists, the cell still runs, and the grader cell after it stops with a message naming the piece.
:func:`write_exercises` does this for every notebook and writes ``.py`` (jupytext percent) and
``.ipynb`` copies without outputs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
_BEGIN_RE = re.compile(r"^(\s*)# BEGIN SOLUTION(?::\s*(.*?))?\s*$")

__all__ = ["BEGIN", "END", "stub_solutions", "count_solutions", "notebook_dir", "write_exercises"]


def count_solutions(text: str) -> int:
    """Number of solution regions in ``text``."""
    return sum(1 for line in text.splitlines() if _BEGIN_RE.match(line))


def stub_solutions(text: str, where: str = "<text>") -> str:
    """``text`` with every ``BEGIN``…``END`` region replaced by a ``NotImplementedError`` stub.

    Raises ValueError naming ``where`` and the line for an unclosed or nested region."""
    out, label, indent, start = [], None, "", 0
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        m = _BEGIN_RE.match(line)
        if m:
            if label is not None:
                raise ValueError(f"{where}:{n}: {BEGIN} inside the region opened on line {start}")
            indent, label, start = m.group(1), m.group(2) or "write this part", n
            continue
        if line.strip() == END:
            if label is None:
                raise ValueError(f"{where}:{n}: {END} without a {BEGIN} before it")
            out.append(f"{indent}raise NotImplementedError({json.dumps('exercise: ' + label)})\n")
            label = None
            continue
        if label is None:
            out.append(line)
    if label is not None:
        raise ValueError(f"{where}:{start}: {BEGIN} is never closed by {END}")
    return "".join(out)


def notebook_dir() -> Path:
    """The workbook's ``notebooks/`` folder (next to the package in a clone)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def write_exercises(out, notebooks=None) -> list[Path]:
    """Write exercise copies (``NN_name.py`` and ``NN_name.ipynb``, no outputs) of every numbered notebook
    in ``notebooks`` (default: the workbook's) into ``out``; notebooks without exercises are copied as
    they are. Returns the paths written."""
    import jupytext

    src = Path(notebooks) if notebooks is not None else notebook_dir()
    if not src.is_dir():
        raise FileNotFoundError(f"notebook folder not found: {src}")
    pys = sorted(src.glob("[0-9][0-9]_*.py"))
    if not pys:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.py) in {src}")
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"out must differ from the notebook folder {src}: the copies would overwrite the solutions")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for py in pys:
        text = stub_solutions(py.read_text(), where=py.name)
        (out / py.name).write_text(text)
        nb = jupytext.reads(text, fmt="py:percent")
        jupytext.write(nb, out / py.with_suffix(".ipynb").name, fmt="ipynb")
        written += [out / py.name, out / py.with_suffix(".ipynb").name]
    return written
