"""Exclusive locks between runs of one project, for what cannot be merged row by row (the DuckDB warehouse
file admits one writer at a time).

A lock is an ``flock`` on a local file: the kernel releases it when the holding process dies, so a killed
run never leaves the project locked. The holder writes who it is into the file (pid, host, command, since
when), so a run that has to wait says which run it waits for, and one that gives up names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_TIMEOUT_S = float(os.environ.get("QF_LOCK_TIMEOUT_S", 1800))


class LockTimeout(RuntimeError):
    """Another run held the lock for longer than this run was willing to wait."""


def describe_holder(info: dict) -> str:
    if not info:
        return "another run (it has not said which yet)"
    return (f"run pid {info.get('pid')} on {info.get('host')} ({info.get('command')}), holding it since "
            f"{info.get('since')}")


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive(path: Path, what: str, *, timeout_s: float | None = None,
              on_wait: Callable[[str], None] | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the lock at ``path`` (``what`` names the resource in messages). When another run holds it, say
    so once through ``on_wait`` and wait up to ``timeout_s`` (default ``QF_LOCK_TIMEOUT_S``, 1800 s)."""
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        began, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe_holder(_holder(fd))
                if time.monotonic() - began >= timeout_s:
                    raise LockTimeout(f"{what} is in use by {holder}; gave up after {timeout_s:.0f} s "
                                      "(QF_LOCK_TIMEOUT_S sets the wait)") from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for {what}: in use by {holder}")
                    told = True
                time.sleep(poll_s)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4])),
              "since": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
