"""The stack's processes, found and stopped by process group (infra/stack.py): /proc where there is one (a zombie
counts as gone), signals otherwise. Plain standard library."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

HAVE_PROC = Path("/proc/self/stat").exists()


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, start time) of a live process, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in brackets may hold spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def start_time(pid: int) -> int:
    stat = _stat(pid) if HAVE_PROC else None
    return stat[3] if stat else 0


def alive(pid: int, start: int = 0) -> bool:
    """Is `pid` running, and the same process as the one started at `start` (0: don't check)?"""
    if HAVE_PROC:
        stat = _stat(pid)
        return stat is not None and stat[0] != "Z" and (not start or stat[3] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes() -> dict[int, tuple[str, int, int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[0] != "Z":
            found[int(entry.name)] = stat
    return found


def _groups_of(pids: list[int]) -> set[int]:
    """The process groups of `pids` and of all their descendants (a Prefect worker starts each flow run in a
    session of its own: those must stop too)."""
    groups = set(pids)
    if HAVE_PROC:
        table = _processes()
        todo = list(pids)
        while todo:
            parent = todo.pop()
            for pid, (_, ppid, pgrp, _) in table.items():
                if ppid == parent:
                    groups.add(pgrp)
                    todo.append(pid)
    groups.discard(os.getpgrp())
    groups.discard(0)
    return groups


def _group_alive(groups: set[int]) -> set[int]:
    if HAVE_PROC:
        return {pgrp for _, _, pgrp, _ in _processes().values() if pgrp in groups}
    alive = set()
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, 0)
            alive.add(group)
    return alive


def _signal_groups(groups: set[int], sig: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def stop_processes(pids: dict[str, int], timeout: float) -> dict[str, str]:
    """SIGTERM the process groups of `pids` (and of their descendants), SIGKILL what is left of one after `timeout`
    seconds. Returns how each stopped: "SIGTERM, 1.2 s" or "SIGKILL after 15 s"."""
    t0 = time.monotonic()
    groups = {name: _groups_of([pid]) for name, pid in pids.items()}
    _signal_groups(set().union(*groups.values()), signal.SIGTERM)
    how = {}
    while True:
        living = _group_alive(set().union(*groups.values()))
        for name in [n for n in groups if n not in how and not groups[n] & living]:
            how[name] = f"SIGTERM, {time.monotonic() - t0:.1f} s"
        if len(how) == len(groups) or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.1)
    left = {name: g for name, g in groups.items() if name not in how}
    if left:
        stubborn = set().union(*left.values())
        _signal_groups(stubborn, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _group_alive(stubborn) and time.monotonic() < deadline:
            time.sleep(0.1)
        how.update({name: f"SIGKILL after {timeout:.0f} s" for name in left})
    return how
