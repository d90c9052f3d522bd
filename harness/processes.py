"""Processes the harness starts, and how they are stopped: each in a session of its own,
found again by descent, by session and by a tag in its environment, and signalled by pid
(never by name).

Why all three: the SuperLink spawns ``flower-superexec`` in a NEW session, so killing the
SuperLink's process group does not reach it (it exits on its own within 0.2 s once its parent
is gone), and the Ray processes of a simulation are grandchildren of that SuperExec.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# pytest: never collect anything from this module
__test__ = False

#: Environment variable whose value (a fresh uuid per harness) marks every process started by
#: one harness instance; cleanup finds stragglers by it.
HARNESS_TAG_VAR = "SLTESTBED_FLOWER_HARNESS_TAG"

#: How a reaper's guard learns that its harness is gone, even killed by SIGKILL, which no
#: handler sees: Linux's parent-death signal, set by util-linux's `setpriv` before it executes
#: the guard (none where `setpriv` is missing).
PARENT_DEATH_SIGNAL = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


def _proc_table() -> dict[int, tuple[int, int, int, str, int]]:
    """Return ``{pid: (ppid, pgid, sid, state, starttime)}`` from /proc."""
    table: dict[int, tuple[int, int, int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2:].split()
        try:
            table[int(entry)] = (int(rest[1]), int(rest[2]), int(rest[3]), rest[0], int(rest[19]))
        except (IndexError, ValueError):
            continue
    return table


def _has_tag(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest if len(rest) > 19 else None


def _starttime(pid: int) -> int | None:
    rest = _stat_fields(pid)
    return int(rest[19]) if rest else None


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (and, if given, has this start time)."""
    rest = _stat_fields(pid)
    if rest is None or rest[0] in ("Z", "X"):
        return False
    return starttime is None or int(rest[19]) == starttime


def _own_lineage() -> set[int]:
    table = _proc_table()
    pid, out = os.getpid(), set()
    while pid > 0 and pid not in out:
        out.add(pid)
        pid = table.get(pid, (0,))[0]
    return out


class ProcessReaper:
    """Start processes in their own sessions and stop them, their trees and stragglers.

    Every process spawned carries ``HARNESS_TAG_VAR=<tag>`` in its environment; ``stop``
    finds targets as (a) descendants of spawned processes, (b) members of their sessions
    (which catches orphans re-parented to init), (c) any process whose environment has the
    tag. It sends SIGTERM, waits ``term_timeout`` s, then SIGKILL. Only processes found
    this way are signalled, never by name.

    With its first process it starts a guard (`guard`): should the thread that started it
    die without ``stop`` (the harness killed by SIGKILL), the guard stops every process
    carrying the tag, so a killed launch or sweep leaves no SuperLink, simulation or Ray
    process behind. ``stop`` ends the guard first.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._needle = f"{HARNESS_TAG_VAR}={tag}".encode()
        self.popens: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        self._sids: set[int] = set()
        #: every harness process ever seen: pid -> start time (to survive pid reuse)
        self.seen: dict[int, int] = {}
        self._guard: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], *, env: Mapping[str, str], cwd: str | os.PathLike[str],
              log_path: Path, stderr_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session, stdout (and stderr) to ``log_path``."""
        if env.get(HARNESS_TAG_VAR) != self.tag:
            raise ValueError("env must carry this reaper's tag (use flower_env)")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # pylint: disable=consider-using-with
        self._logs.append(out)
        err: Any = subprocess.STDOUT
        if stderr_path is not None:
            err = open(stderr_path, "ab")  # pylint: disable=consider-using-with
            self._logs.append(err)
        if self._guard is None and PARENT_DEATH_SIGNAL:  # untagged, in a session of its own: never a target
            self._guard = subprocess.Popen(  # pylint: disable=consider-using-with
                PARENT_DEATH_SIGNAL + [sys.executable, "-S", __file__, "--guard", self.tag],
                env={k: v for k, v in env.items() if k != HARNESS_TAG_VAR}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            cmd, env=dict(env), cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=out,
            stderr=err, start_new_session=True,
        )
        self.popens.append(proc)
        self._sids.add(proc.pid)
        start = _starttime(proc.pid)
        if start is not None:
            self.seen[proc.pid] = start
        return proc

    def snapshot(self, scan_env: bool = True) -> set[int]:
        """Return the live harness processes now (and remember them in ``seen``)."""
        table = _proc_table()
        exclude = _own_lineage()
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        # only children not yet reaped: their pids cannot have been reused
        stack = [p.pid for p in self.popens if p.poll() is None]
        while stack:
            pid = stack.pop()
            if pid in found or pid not in table:
                continue
            found.add(pid)
            stack.extend(children.get(pid, []))
        for pid, (_ppid, _pgid, sid, _state, _st) in table.items():
            if sid in self._sids:
                found.add(pid)
            elif scan_env and pid not in found and _has_tag(pid, self._needle):
                found.add(pid)
        found -= exclude
        live = set()
        for pid in found:
            state, start = table[pid][3], table[pid][4]
            self._sids.add(table[pid][2])
            self.seen.setdefault(pid, start)
            if state not in ("Z", "X"):
                live.add(pid)
        # a sid of a process outside our set must never widen the net: keep only the
        # sessions led by processes we found
        self._sids = {s for s in self._sids if s in self.seen}
        return live

    def alive(self) -> list[int]:
        """Pids from ``seen`` that still run (same start time, not zombie)."""
        return sorted(p for p, st in self.seen.items() if pid_alive(p, st))

    def stop(self, term_timeout: float = 5.0, kill_timeout: float = 5.0) -> list[int]:
        """SIGTERM every harness process, SIGKILL what is left after ``term_timeout``.

        Returns the pids still alive at the end (should be empty).
        """
        def signal_all(sig: int, pids: set[int]) -> None:
            for proc in self.popens:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

        if self._guard is not None:
            self._guard.kill()
            self._guard.wait()
        targets = self.snapshot()
        signal_all(signal.SIGTERM, targets)
        deadline = time.monotonic() + term_timeout
        while time.monotonic() < deadline:
            for proc in self.popens:
                proc.poll()
            new = self.snapshot() - targets
            if new:  # spawned meanwhile (e.g. a ServerApp launch in flight)
                signal_all(signal.SIGTERM, new)
                targets |= new
            if not self.alive():
                break
            time.sleep(0.1)
        for _ in range(3):
            left = set(self.alive()) | self.snapshot()
            if not left:
                break
            signal_all(signal.SIGKILL, left)
            end = time.monotonic() + kill_timeout
            while time.monotonic() < end and self.alive():
                for proc in self.popens:
                    proc.poll()
                time.sleep(0.05)
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        for fh in self._logs:
            with contextlib.suppress(OSError):
                fh.close()
        self._logs.clear()
        return self.alive()


class Interrupted(Exception):
    """SIGINT or SIGTERM reached a harness command (`interrupts_raise`); `exit_code` is
    128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_raise():
    """Within: SIGINT and SIGTERM raise `Interrupted` in the main thread, so that the
    context managers that started processes stop them by pid on the way out (SIGTERM would
    otherwise end this process at once and orphan them)."""

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (its private pages plus its share of each shared
    page: summed over processes, shared memory counts once), from /proc/<pid>/smaps_rollup;
    the resident set size where that file is missing; 0 for a process gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class MemoryWatch:
    """The peak memory of every process a reaper's harness started (SuperLink, SuperExec,
    simulation, Ray, ClientApp actors: all carry its tag), sampled every `interval` seconds on a thread: the sum
    of their proportional set sizes, and how many processes made it."""

    def __init__(self, reaper: ProcessReaper, interval: float = 1.0) -> None:
        import threading

        self.reaper, self.interval = reaper, interval
        self.peak_bytes, self.peak_processes, self.samples = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        # read-only (the reaper's own snapshot updates its state, which its thread uses): the
        # processes whose environment carries this harness's tag, Ray's workers included
        pids = [p for p in _proc_table() if _has_tag(p, self.reaper._needle)]
        total = sum(pss_bytes(p) for p in pids)
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(pids)
        return total

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def guard(tag: str) -> None:
    """A reaper's guard: wait for SIGTERM (the parent-death signal: its harness is gone), then
    stop every process carrying `tag`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.sigwait({signal.SIGTERM})
    ProcessReaper(tag).stop()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--guard"] or len(sys.argv) != 3:
        sys.exit("usage: processes.py --guard TAG (started by ProcessReaper.spawn)")
    guard(sys.argv[2])
