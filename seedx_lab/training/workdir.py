"""The work folder of a training run: one run at a time, a resume only of the same run, a log without repeats.

* :class:`WorkLock` — an exclusive ``fcntl.flock`` on ``<work>/train.lock`` held for the life of a run. The
  kernel drops it when the holding process ends in any way (even ``kill -9``), so a lock left behind by a
  dead run is simply taken over; the file records who holds it (pid, host, start) for the refusal message.
* :func:`config_changes` — the fields of a resumed run's configuration that differ from the saved one,
  apart from :data:`MAY_CHANGE` (where the output goes and how the run is scheduled, not what it learns).
* :func:`trim_log` — drop the rows of ``train_log.csv`` written after the step a resume starts from, so
  the log keeps one row per logged step.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:                     # not on POSIX: no lock (the project targets Linux and macOS)
    fcntl = None

LOCK_NAME = "train.lock"
# fields a resume may change: where things go, thread count and scheduling, how often it logs and saves
MAY_CHANGE = ("out", "work", "threads", "parallel", "log_every", "ckpt_every")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkLock:
    """Exclusive lock on a work folder; ``release()`` (or the end of the process) frees it."""

    def __init__(self, work: Path):
        self.path = Path(work) / LOCK_NAME
        self.stale: dict | None = None          # what a dead holder had written, when one was taken over
        self.f = None
        if fcntl is None:
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(f))
            f.close()
            raise ValueError(f"the work folder {self.path.parent} is in use by another training run ({holder}; "
                             f"lock {self.path}): wait for it to finish or stop it, or give this run another "
                             "--work folder") from None
        except OSError as e:
            f.close()
            raise OSError(e.errno, f"cannot lock the work folder: {e.strerror}", str(self.path)) from None
        previous = _read(f)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale = previous               # its process ended without releasing (crashed or killed)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                start=time.strftime("%Y-%m-%d %H:%M:%S %Z"))) + "\n")
        f.flush()
        self.f = f

    def release(self) -> None:
        if self.f is not None and not self.f.closed:
            self.f.seek(0)
            self.f.truncate()                   # empty: nobody holds it (the file stays; see module doc)
            self.f.close()
        self.f = None

    @property
    def held(self) -> bool:
        return self.f is not None and not self.f.closed


def _read(f) -> dict:
    f.seek(0)
    try:
        data = json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "holder unknown"
    here = info.get("host") == socket.gethostname()
    alive = " (running)" if here and _pid_alive(int(info["pid"])) else ""
    return f"pid {info['pid']}{alive} on {info.get('host', '?')}, started {info.get('start', '?')}"


def config_changes(saved: dict, current: dict) -> list[str]:
    """``"name: saved -> current"`` for each field that differs, :data:`MAY_CHANGE` aside."""
    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v

    out = []
    for k in sorted(set(saved) | set(current)):
        if k in MAY_CHANGE:
            continue
        a, b = saved.get(k, "(absent)"), current.get(k, "(absent)")
        if norm(a) != norm(b):
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def trim_log(path: Path, keep) -> int:
    """Rewrite ``train_log.csv`` (atomically) keeping the rows for which ``keep(stage, step)``; return how many
    rows were dropped."""
    from ..files import atomic_write

    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [r for r in rows if keep(r.get("stage"), _int(r.get("step")))]
    if len(kept) == len(rows) or not fields:
        return 0

    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
    atomic_write(path, write)
    return len(rows) - len(kept)


def _int(v) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return -1


def note(msg: str) -> None:
    print(f"seedx-lab train: {msg}", file=sys.stderr)
