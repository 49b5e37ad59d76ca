"""Run the README's examples and check that they print what the README says.

Conventions (for whoever edits README.md):

* Every fenced block opened with ```bash / ```sh / ```shell or ```python is an example and runs here, in a
  fresh temporary folder, in this order (so a later example may read a file an earlier one wrote).
* bash: one command per line; ``#`` starts a comment. Lines calling ``make`` and ``seedx-lab train`` are not
  run (setup and training take minutes to hours). ``.venv/bin/seedx-lab ARGS`` / ``seedx-lab ARGS`` run
  in-process as ``seedx_lab.cli.main(ARGS)`` with one shared seedx-tiny (``load`` returns it), and must
  exit with 0. An argument written in capitals only (``OUT``) is a placeholder: it becomes a new folder.
* python: run statement by statement in one namespace per block (``seedx_lab.load`` returns the shared model).
* Expected output, on the line of a command or statement, in its comment (the marker opens the comment or
  follows a ``;`` in it):
  ``# prints: TEXT`` -- everything it prints (whitespace-trimmed) is TEXT;
  ``# -> TEXT`` -- the same, for a Python expression statement whose value is printed (``repr``);
  ``# last line: TEXT`` -- its last printed line is TEXT.
  ``…`` in TEXT stands for any text on one line. A comment without one of these markers is not checked.
"""
from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(\w+)\s*$")
_EXPECT = re.compile(r"#(?:[^#]*?;\s*|\s*)(prints:|->|last line:)\s*(.*?)\s*$")
_SKIP = re.compile(r"^(make\b|(\S*/)?seedx-lab\s+train\b)")


def blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """``(language, first line number, lines)`` of every bash/sh/shell/python fenced block."""
    out, lang, start, body = [], None, 0, []
    for no, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line.strip()) if lang is None else None
        if lang is None and m:
            lang, start, body = m.group(1).lower(), no + 1, []
        elif lang is not None and line.strip() == "```":
            if lang in ("bash", "sh", "shell", "python"):
                out.append(("python" if lang == "python" else "bash", start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def matches(expected: str, got: str) -> bool:
    """``got`` equals ``expected`` where each ``…`` may stand for any text on one line."""
    pattern = ".*?".join(re.escape(p) for p in expected.split("…"))
    return re.fullmatch(pattern, got.strip()) is not None


def check(kind: str, expected: str, out: str, where: str) -> None:
    text = out.strip()
    got = text.splitlines()[-1] if kind == "last line:" and text else text
    assert matches(expected, got), f"{where}: the README says it prints {expected!r}, it printed {got!r}"


def test_matching_rules():
    assert matches("a … b", "a x y b") and not matches("a … b", "a x y c")
    assert matches("caption_acc=… image_acc=…", "caption_acc=0.9 image_acc=0.7")
    assert not matches("x", "x y")
    assert _EXPECT.search("seedx-lab eval  # test split; last line: a=…").groups() == ("last line:", "a=…")
    assert _EXPECT.search("seedx-lab tile x.png  # which grid, and why") is None
    lines = ["intro", "```bash", "make lab", "seedx-lab tile x.png  # prints: …", "```", "```text", "no", "```",
             "```python", "1 + 1  # -> 2", "```"]
    found = blocks("\n".join(lines))
    assert [(k, n) for k, n, _ in found] == [("bash", 3), ("python", 10)]
    assert _SKIP.match("make lab") and _SKIP.match(".venv/bin/seedx-lab train --quick")
    assert not _SKIP.match(".venv/bin/seedx-lab eval")


@pytest.fixture(scope="module")
def shared_model(shipped):
    return shipped                                   # conftest: load("seedx-tiny"), once per session


def run_bash(lines, start, tmp_path, monkeypatch):
    from seedx_lab import cli

    ran = 0
    for no, line in enumerate(lines, start=start):
        words = shlex.split(line, comments=True)
        if not words or _SKIP.match(" ".join(words)):
            continue
        where = f"README.md:{no}"
        assert words[0].endswith("seedx-lab"), f"{where}: only seedx-lab commands can run here, got {words[0]!r}"
        args = [str(tmp_path / w.lower()) if re.fullmatch(r"[A-Z][A-Z_]*", w) else w for w in words[1:]]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(args)
        assert rc == 0, f"{where}: exit status {rc}; printed {buf.getvalue()!r}"
        m = _EXPECT.search(line)
        if m:
            check(m.group(1), m.group(2), buf.getvalue(), where)
        ran += 1
    return ran


def run_python(lines, start):
    source = "\n".join(lines)
    tree = ast.parse(source)
    ns: dict = {}
    for stmt in tree.body:
        last = lines[stmt.end_lineno - 1]
        m = _EXPECT.search(last)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            if isinstance(stmt, ast.Expr) and m and m.group(1) == "->":
                print(repr(eval(compile(ast.Expression(stmt.value), "README.md", "eval"), ns)))
            else:
                exec(compile(ast.Module([stmt], []), "README.md", "exec"), ns)
        if m:
            check(m.group(1), m.group(2), buf.getvalue(), f"README.md:{start + stmt.end_lineno - 1}")
    return len(tree.body)


def test_readme_examples(shared_model, tmp_path, monkeypatch):
    import seedx_lab
    from seedx_lab import loading

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "load", lambda *a, **k: shared_model)
    monkeypatch.setattr(seedx_lab, "load", lambda *a, **k: shared_model, raising=False)
    found = blocks(README.read_text(encoding="utf-8"))
    assert found, "README.md has no bash or python examples"
    ran = 0
    for kind, start, lines in found:
        ran += run_bash(lines, start, tmp_path, monkeypatch) if kind == "bash" else run_python(lines, start)
    assert ran > 0
