"""The course: every notebook exercise's solution passes its grader, every stub fails it with a readable
message, `seedx-lab exercises OUT` writes the stubbed copies, and a stubbed notebook stops at its first
grader when executed."""
import re
from pathlib import Path

import jupytext
import pytest

from seedx_lab.cli import main
from seedx_lab.lab import checks
from seedx_lab.lab.exercises import BEGIN, count_solutions, stub_solutions, write_exercises

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STAGE_NOTEBOOKS = sorted(p for p in NOTEBOOKS.glob("0[0-9]_*.py") if BEGIN in p.read_text())


def _exercises(py: Path):
    """(solution cells, grader cells) of a stage notebook: a grader is the first code cell after a solution
    cell that calls ``checks.check_``."""
    cells = [c.source for c in jupytext.read(py).cells if c.cell_type == "code"]
    out = []
    for i, src in enumerate(cells):
        if BEGIN in src:
            grader = next(c for c in cells[i + 1:] if "checks.check_" in c)
            out.append((src, grader))
    return out


CASES = [(py, k) for py in STAGE_NOTEBOOKS for k in range(len(_exercises(py)))]


def _run(exercises, k, stub: bool):
    """Run solution cells 0..k (cell k stubbed when asked), then cell k's grader, in one namespace."""
    ns = {"checks": checks}
    for j, (src, _) in enumerate(exercises[: k + 1]):
        exec(compile(stub_solutions(src) if (stub and j == k) else src, f"<cell {j}>", "exec"), ns)
    exec(compile(exercises[k][1], "<grader>", "exec"), ns)


def test_the_stage_notebooks_hold_the_exercises_the_issue_asks_for():
    text = {p.name[:2]: p.read_text() for p in STAGE_NOTEBOOKS}
    graders = re.findall(r"checks\.(check_\w+)\(", "".join(text.values()))
    for name in ("check_grid_choice", "check_tiling", "check_resampler_forward", "check_inputs_embeds",
                 "check_forcing_rule", "check_hidden_state_pick", "check_image_features", "check_euler_loop"):
        assert name in graders, f"no notebook calls {name}"
    assert 'mode="strict"' in text["05"] and 'mode="faithful"' in text["05"]
    for nn, t in text.items():       # difficulty, time and a folded hint for every exercise
        n = count_solutions(t)
        assert len(re.findall(r"### Exercise .*★.*\(about \d+ min\)", t)) >= sum(
            1 for _ in re.finditer(r"### Exercise", t)), nn
        assert t.count("<details><summary>Hint") >= 1, nn
        assert n >= 1


@pytest.mark.parametrize("py,k", CASES, ids=lambda v: v.stem[:2] if isinstance(v, Path) else str(v))
def test_solution_passes_and_stub_fails_its_grader(py, k, capsys):
    ex = _exercises(py)
    _run(ex, k, stub=False)
    assert "✓" in capsys.readouterr().out
    label = re.search(r"# BEGIN SOLUTION: (.*)", ex[k][0]).group(1).strip()
    with pytest.raises(checks.CheckFailed, match=re.escape(f"not written yet (exercise: {label})")):
        _run(ex, k, stub=True)


def test_graders_name_what_is_wrong():
    import torch

    def off_by_one(tokens, hidden, token_ids):     # takes </img> itself instead of the first image token
        n = len(token_ids.img)
        ids = tokens.tolist()
        return torch.stack([hidden[i - n + 1: i + 1] for i, t in enumerate(ids) if t == token_ids.eoi])

    with pytest.raises(checks.CheckFailed, match=r"you took positions \[\[4, 5, 6, 7\]\]"):
        checks.check_hidden_state_pick(off_by_one)

    def no_strict(ids, scores, tid, mode):         # faithful arithmetic in strict mode
        out = scores.clone()
        out[:, [*tid.img, tid.eoi]] = 0.0
        return out

    with pytest.raises(checks.CheckFailed, match=r"text only .*state as outside.*column 11 \(</img>\): got 0, "
                                                 r"expected -inf"):
        checks.check_forcing_rule(no_strict, "strict")

    with pytest.raises(checks.CheckFailed, match=r"for an image of 896x448 .* you chose \(448, 448\), the reference "
                                                 r"keeps \(896, 448\)"):
        checks.check_grid_choice(lambda size, base: (base, base))


def test_stub_keeps_the_signature_and_names_the_piece():
    src = "def f(x):\n    y = 1\n    # BEGIN SOLUTION: the piece\n    return x + y\n    # END SOLUTION\n"
    ns = {}
    exec(stub_solutions(src), ns)
    with pytest.raises(NotImplementedError, match="exercise: the piece"):
        ns["f"](1)
    with pytest.raises(ValueError, match="never closed"):
        stub_solutions("# BEGIN SOLUTION\nx = 1\n", "nb.py")


def test_exercises_command_writes_stubbed_copies(tmp_path):
    assert main(["exercises", str(tmp_path)]) == 0
    for py in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        copy = tmp_path / py.name
        assert copy.exists() and (tmp_path / py.with_suffix(".ipynb").name).exists()
        text = copy.read_text()
        assert BEGIN not in text
        assert text.count('raise NotImplementedError("exercise: ') == count_solutions(py.read_text())
        nb = jupytext.read(tmp_path / py.with_suffix(".ipynb").name)
        assert len(nb.cells) == len(jupytext.read(py).cells)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert main(["exercises", str(NOTEBOOKS)]) == 2          # refuses to overwrite the solutions


def test_stubbed_notebook_stops_at_its_first_grader(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    write_exercises(tmp_path)
    path = tmp_path / "01_anyres.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    msg = str(err.value)
    assert "CheckFailed" in msg and "grid choice: your function is not written yet" in msg
    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.outputs))
    assert "checks.check_grid_choice" in code[failed].source
    assert all(not c.get("execution_count") for c in code[failed + 1:])     # nothing after it ran


def _markdown(py: Path) -> list[str]:
    return [c.source for c in jupytext.read(py).cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("py", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem[:2])
def test_notebook_ends_with_three_things_to_know(py):
    cell = jupytext.read(py).cells[-1]
    last = cell.source
    assert cell.cell_type == "markdown" and last.lstrip().startswith("## What you should now know"), f"{py.name} does not end with it"
    numbers = re.findall(r"^(\d)\. \S", last, re.M)
    assert numbers == ["1", "2", "3"], f"{py.name}: {numbers} instead of three numbered lines 1-3"


@pytest.mark.parametrize("py", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem[:2])
def test_every_end_of_notebook_exercise_has_a_folded_answer(py):
    """An "## Exercises" list of n items is followed, in the same cell or the next markdown cells, by n folded
    answers (one per item); a notebook without that section has nothing to answer."""
    md = _markdown(py)
    start = next((i for i, m in enumerate(md) if "## Exercises" in m), None)
    if start is None:
        return
    listing = md[start].split("## Exercises", 1)[1]
    items = re.findall(r"^(\d+)\. ", listing, re.M)
    answers = sum(m.count("<details><summary>Answer") for m in md[start:])
    assert items, f"{py.name}: an Exercises heading without a numbered list"
    assert answers >= len(items), f"{py.name}: {len(items)} exercises, {answers} answers"
