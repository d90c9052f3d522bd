"""Run the Flower app end to end: isolated SuperLinks on free ports, for the experiment
command, sweeps and tests.

What it offers (flwr 1.41, Linux):

* :func:`flower_env` -- an environment for every Flower process: its own ``FLWR_HOME``,
  no runtime ``uv sync`` of app dependencies, no update check, no telemetry, the venv's
  ``bin`` first on ``PATH``, and a per-harness tag variable by which every process we
  start (and everything it spawns: SuperExec, ServerApp, Ray, ClientApps) is found again.
* :func:`run_simulation` -- start our own ``flower-superlink --simulation`` on a free port,
  ``flwr run --stream`` an app against it, read the final status with
  ``flwr list --run-id ... --format json``, stop everything, return a :class:`RunResult`.
* :func:`simulation_superlink` -- the same SuperLink as a context manager, for several
  runs in a row (saves the ~2 s start-up per run).
* :func:`deployment` -- a real (non-simulation) SuperLink plus N ``flower-supernode``
  processes, each with its own ``--node-config``; ``submit(run_config)`` runs the app.
* :class:`RunResult` -- what a run produced.

Facts this module relies on (checked against the installed flwr 1.41.0 sources):

* A SuperLink serves the Control, Fleet and Runtime(ServerAppIo) APIs over HTTP on ONE
  port (``--host``/``--port``); ``--control-api-address``/``--fleet-api-address`` are
  deprecated. ``GET http://host:port/health`` answers 200 once it is up.
* ``flwr`` reads connections from ``$FLWR_HOME/config.toml``; a connection with an
  explicit ``address`` is never auto-started (only ``:local:`` is). We write a config
  whose default connection is our SuperLink, so nothing ever touches 127.0.0.1:39091.
* The SuperLink spawns ``flower-superexec`` in a NEW session (``start_new_session``), so
  killing the SuperLink's process group does not reach it (it exits on its own within
  0.2 s once its parent is gone, via ``--parent-pid``). Ray processes of a simulation are
  grandchildren of that SuperExec. Hence the cleanup here kills process groups AND every
  descendant AND every process whose environment carries our tag.
* ``flwr run --stream`` blocks until the run ends but exits 0 even when the run failed:
  the status must be read with ``flwr list``.
* The ServerApp runs with the SuperLink's working directory (here ``tmp_dir``); a
  relative path in the run config resolves there, NOT against the directory where
  ``flwr run`` was called. In a deployment a ClientApp runs in its SuperNode's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HARNESS_TAG_VAR",
    "Deployment",
    "FlowerHarnessError",
    "ProcessReaper",
    "RunResult",
    "SimulationSuperLink",
    "deployment",
    "find_venv_bin",
    "flower_env",
    "flwr_cli",
    "free_port",
    "pid_alive",
    "run_simulation",
    "simulation_superlink",
    "write_flower_config",
]

# pytest: never collect anything from this module
__test__ = False

#: Environment variable whose value (a fresh uuid per :func:`flower_env` call) marks every
#: process started by one harness instance; cleanup finds stragglers by it.
HARNESS_TAG_VAR = "SLTESTBED_FLOWER_HARNESS_TAG"

#: Name of the SuperLink connection the harness writes into ``$FLWR_HOME/config.toml``.
CONNECTION_NAME = "harness"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_RUN_ID_RE = re.compile(r"Successfully started run (\d+)")
_NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")


class FlowerHarnessError(RuntimeError):
    """A Flower process of the harness could not be started or reached."""


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """Outcome of one ``flwr run``.

    Attributes
    ----------
    run_id : int | None
        The run id the SuperLink assigned (None when submission failed).
    status : str
        Final status: ``"finished:completed"``, ``"finished:failed"``,
        ``"finished:stopped"``, or harness-made ``"submit-failed"`` / ``"timeout"``.
    ok : bool
        True only for ``"finished:completed"``.
    status_details : str
        The SuperLink's details (e.g. the exception message of a failed run).
    returncode : int | None
        Exit code of ``flwr run`` (0 even for failed runs; None if it was killed).
    stdout, stderr : str
        Output of ``flwr run`` (ANSI colours stripped).
    logs : str
        The run's log text: what ``--stream`` printed (ServerApp stdout, Flower logs and,
        in simulation, ClientApp stdout relayed by Ray). In a deployment, ClientApp stdout
        is only in the SuperNode logs (see :meth:`Deployment.supernode_logs`).
    seconds : float
        Wall time from launching ``flwr run`` to the final status being known (includes
        ~1-1.5 s for the ``flwr list`` call that reads the status).
    stream_seconds : float
        Wall time from launching ``flwr run --stream`` to its exit (= the run's end).
    run_info : dict
        The run's entry from ``flwr list --run-id <id> --format json`` (elapsed,
        timestamps, compute time, ...), empty if unavailable.
    command : list[str]
        The ``flwr run`` command line.
    pids : list[int]
        Processes seen belonging to the harness while this run was alive.
    """

    run_id: int | None
    status: str
    ok: bool
    status_details: str = ""
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    logs: str = ""
    seconds: float = 0.0
    stream_seconds: float = 0.0
    run_info: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """Return a multi-line summary for assertion messages."""
        return (
            f"run {self.run_id}: {self.status} ({self.status_details}) "
            f"rc={self.returncode} in {self.seconds:.1f}s\n$ {' '.join(self.command)}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


# --------------------------------------------------------------------------------------
# Environment, ports, config
# --------------------------------------------------------------------------------------
def find_venv_bin() -> Path:
    """Return the ``bin`` directory holding ``flwr`` and ``flower-superlink``.

    Looks in the running interpreter's prefix first, then ``<repo>/.venv/bin``.
    Raises :class:`FlowerHarnessError` when neither has ``flower-superlink``.
    """
    candidates = [
        Path(sys.prefix) / "bin",
        Path(sys.executable).parent,
        _REPO_ROOT / ".venv" / "bin",
    ]
    for cand in candidates:
        if (cand / "flower-superlink").exists() and (cand / "flwr").exists():
            return cand
    raise FlowerHarnessError(
        "flower-superlink/flwr not found in " + ", ".join(str(c) for c in candidates)
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0).

    There is a small race until the real server binds it; the starters here retry with a
    new port when the server dies on start-up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_env(tmp_dir: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment (copy of ``os.environ``) for isolated Flower processes.

    Sets ``FLWR_HOME=<tmp_dir>/flwr_home`` (created; app installs, config.toml and
    credentials go there, never to ~/.flwr), ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``,
    ``FLWR_DISABLE_UPDATE_CHECK=1``, ``FLWR_TELEMETRY_ENABLED=0``, puts the venv's ``bin``
    first on ``PATH`` and sets ``VIRTUAL_ENV``. ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` and
    ``FLWR_LOCAL_CONTROL_API_PORT`` are pointed at fresh free ports, so that even a
    ``:local:`` connection would auto-start on its own port rather than reuse a
    developer's SuperLink on 39091. ``RAY_ADDRESS`` is removed so a simulation never joins
    an existing Ray cluster. ``HARNESS_TAG_VAR`` gets a fresh uuid that marks every
    process started with this environment. ``extra`` is applied last.
    """
    tmp = Path(tmp_dir).resolve()
    home = tmp / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = find_venv_bin()
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT"):
        env.pop(key, None)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "VIRTUAL_ENV": str(venv_bin.parent),
            "PATH": str(venv_bin) + os.pathsep + env.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            HARNESS_TAG_VAR: uuid.uuid4().hex,
        }
    )
    if extra:
        env.update(extra)
    return env


def write_flower_config(flwr_home: str | os.PathLike[str], address: str, name: str = CONNECTION_NAME) -> Path:
    """Write ``<flwr_home>/config.toml`` with one insecure connection, the default.

    The file has no ``:local:`` connection, so no ``flwr`` call can auto-start a SuperLink.
    Returns the path written.
    """
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[superlink]\n"
        f'default = "{name}"\n\n'
        f"[superlink.{name}]\n"
        f'address = "{address}"\n'
        "insecure = true\n",
        encoding="utf-8",
    )
    return path


def _write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    """Write a flat/nested mapping as TOML (typed: int/float/bool/str kept as such)."""
    import tomli_w  # a dependency of flwr

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(values)), encoding="utf-8")
    return path


def _format_kv(values: Mapping[str, Any]) -> str:
    """Format ``{"a": 1, "b": "x"}`` as Flower's ``a=1 b="x"`` override string."""
    parts = []
    for key, val in values.items():
        if isinstance(val, bool):
            txt = "true" if val else "false"
        elif isinstance(val, (int, float)):
            txt = repr(val)
        else:
            sval = str(val)
            if '"' in sval:
                raise ValueError(f"value for {key!r} may not contain a double quote")
            txt = f'"{sval}"'
        parts.append(f"{key}={txt}")
    return " ".join(parts)


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _read(path: Path) -> str:
    try:
        return _strip_ansi(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return ""


def flwr_cli(args: list[str], env: Mapping[str, str], *, timeout: float = 60.0,
             cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``flwr <args>`` from the venv with ``env``; return the completed process."""
    exe = str(Path(env["PATH"].split(os.pathsep)[0]) / "flwr")
    return subprocess.run(
        [exe, *args], env=dict(env), cwd=cwd, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------
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
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._needle = f"{HARNESS_TAG_VAR}={tag}".encode()
        self.popens: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        self._sids: set[int] = set()
        #: every harness process ever seen: pid -> start time (to survive pid reuse)
        self.seen: dict[int, int] = {}

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


# --------------------------------------------------------------------------------------
# SuperLink
# --------------------------------------------------------------------------------------
def _health_ok(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=0.5) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _start_superlink(reaper: ProcessReaper, env: Mapping[str, str], cwd: Path, *,
                     simulation: bool, log_path: Path, startup_timeout: float = 30.0,
                     attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``flower-superlink --insecure`` on a free port; wait for /health."""
    venv_bin = Path(env["PATH"].split(os.pathsep)[0])
    last_err = ""
    for _ in range(attempts):
        port = free_port()
        cmd = [str(venv_bin / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
               "--port", str(port), "--disable-runtime-dependency-installation"]
        if simulation:
            cmd.append("--simulation")
        proc = reaper.spawn(cmd, env=env, cwd=cwd, log_path=log_path)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_err = f"exited with {proc.returncode}"
                break
            if _health_ok(address):
                return proc, address
            time.sleep(0.2)
        else:
            last_err = f"no /health within {startup_timeout}s"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise FlowerHarnessError(f"flower-superlink did not start ({last_err}); see {log_path}:\n"
                             + _read(log_path)[-3000:])


def _parse_list_json(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError:
        return {}
    runs = data.get("runs") or []
    return runs[0] if runs else {}


def _echo_new(path: Path, offset: int, echo) -> int:
    """Pass on the lines of the run's stream written since `offset` (progress as it runs)."""
    text = _read(path)
    end = text.rfind("\n") + 1
    if end > offset:
        echo(_strip_ansi(text[offset:end]).rstrip("\n"))
        return end
    return offset


def _submit(env: Mapping[str, str], reaper: ProcessReaper, app_dir: str | os.PathLike[str],
            run_dir: Path, run_config: Mapping[str, Any] | None,
            federation_config: Mapping[str, Any] | None, timeout: float, echo=None) -> RunResult:
    """``flwr run --stream`` the app against the config.toml default; wait for the end."""
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr = str(Path(env["PATH"].split(os.pathsep)[0]) / "flwr")
    cmd = [flwr, "run", str(Path(app_dir).resolve()), CONNECTION_NAME]
    if run_config:
        cmd += ["--run-config", str(_write_toml(run_dir / "run_config.toml", run_config))]
    if federation_config:
        cmd += ["--federation-config", _format_kv(federation_config)]
    cmd.append("--stream")
    out_path, err_path = run_dir / "flwr_run.stdout", run_dir / "flwr_run.stderr"
    for stale in (out_path, err_path):  # a reused directory must not lend an old run id
        stale.unlink(missing_ok=True)
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = reaper.spawn(cmd, env=env, cwd=run_dir, log_path=out_path, stderr_path=err_path)
    seen_pids: set[int] = set()
    last_scan = 0.0
    echoed = 0
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() - last_scan > 1.0:
            seen_pids |= reaper.snapshot(scan_env=False)
            last_scan = time.monotonic()
            if echo is not None:
                echoed = _echo_new(out_path, echoed, echo)
        time.sleep(0.1)
    if echo is not None:
        _echo_new(out_path, echoed, echo)
    timed_out = proc.poll() is None
    stream_seconds = time.monotonic() - t0
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stdout, stderr = _read(out_path), _read(err_path)
    match = _RUN_ID_RE.search(stdout)
    run_id = int(match.group(1)) if match else None
    logs = stdout[match.end():].lstrip("\n") if match else ""
    result = RunResult(run_id=run_id, status="submit-failed", ok=False, returncode=proc.returncode,
                       stdout=stdout, stderr=stderr, logs=logs, command=cmd,
                       stream_seconds=stream_seconds)
    if run_id is not None:
        if timed_out:  # do not let the run go on (matters for a reused SuperLink)
            with contextlib.suppress(subprocess.TimeoutExpired):
                flwr_cli(["stop", str(run_id), CONNECTION_NAME], env, timeout=30, cwd=run_dir)
        # --stream ends when the run ends, but its exit code says nothing about success
        info: dict[str, Any] = {}
        while True:
            seen_pids |= reaper.snapshot(scan_env=False)
            try:
                res = flwr_cli(["list", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"],
                               env, timeout=30, cwd=run_dir)
                info = _parse_list_json(res.stdout) or info
            except subprocess.TimeoutExpired:
                pass
            if str(info.get("status", "")).startswith("finished") or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        result.run_info = info
        status = str(info.get("status", ""))
        result.status = status if status.startswith("finished") else "timeout"
        details = str(info.get("status-details", ""))
        result.status_details = "" if details == "N/A" else details
        if timed_out:  # report the timeout even if `flwr stop` made it finished:stopped
            result.status = "timeout"
            result.status_details = f"server status after stop: {status or 'unknown'}"
        if not logs.strip():  # stream gave nothing: fetch the logs afterwards
            with contextlib.suppress(subprocess.TimeoutExpired):
                res = flwr_cli(["log", str(run_id), CONNECTION_NAME, "--show"], env, timeout=30, cwd=run_dir)
                result.logs = _strip_ansi(res.stdout)
    elif timed_out:
        result.status = "timeout"
    result.ok = result.status == "finished:completed"
    result.seconds = time.monotonic() - t0
    result.pids = sorted(seen_pids)
    return result


def _stop_all(reaper: ProcessReaper, term_timeout: float, raise_on_survivors: bool) -> None:
    """Stop every harness process; complain about survivors unless an error is in flight."""
    left = reaper.stop(term_timeout=term_timeout)
    if left:
        msg = f"launch: processes survived SIGTERM+SIGKILL: {left}"
        if raise_on_survivors:
            raise FlowerHarnessError(msg)
        print(msg, file=sys.stderr)


class SimulationSuperLink:
    """A running ``flower-superlink --simulation`` owned by the harness.

    Attributes: ``address`` ("127.0.0.1:<port>"), ``pid``, ``env``, ``tmp_dir`` (also the
    SuperLink's and thus the ServerApp's working directory), ``log_path``, ``reaper``.
    """

    def __init__(self, tmp_dir: Path, env: dict[str, str], reaper: ProcessReaper,
                 proc: subprocess.Popen[bytes], address: str, log_path: Path) -> None:
        self.tmp_dir, self.env, self.reaper = tmp_dir, env, reaper
        self.proc, self.address, self.log_path = proc, address, log_path
        self._runs = 0

    @property
    def pid(self) -> int:
        """Pid of the flower-superlink process."""
        return self.proc.pid

    def submit(self, app_dir: str | os.PathLike[str], run_config: Mapping[str, Any] | None = None,
               num_supernodes: int = 2, federation_config: Mapping[str, Any] | None = None,
               timeout: float = 600, echo=None) -> RunResult:
        """Run ``app_dir`` with ``num_supernodes`` simulated nodes; wait for the end
        (``echo``: a function that gets the run's output lines as they come).

        ``run_config`` keys must exist in the app's ``[tool.flwr.app.config]``; values keep
        their types (they travel as a TOML file). ``federation_config`` adds
        ``--federation-config`` keys, e.g. ``{"client-resources-num-cpus": 1}``.
        """
        fed = {"num-supernodes": int(num_supernodes), **dict(federation_config or {})}
        self._runs += 1
        return _submit(self.env, self.reaper, app_dir, self.tmp_dir / "runs" / f"run-{self._runs}",
                       run_config, fed, timeout, echo)

    def log(self) -> str:
        """Return the SuperLink's output so far."""
        return _read(self.log_path)


@contextlib.contextmanager
def simulation_superlink(tmp_dir: str | os.PathLike[str], env: dict[str, str] | None = None,
                         term_timeout: float = 5.0) -> Iterator[SimulationSuperLink]:
    """Start our own simulation SuperLink on a free port; stop it and all it spawned on exit.

    ``$FLWR_HOME/config.toml`` gets a default connection ``harness`` to it. The SuperLink
    runs in ``tmp_dir`` (ServerApp cwd) and logs to ``tmp_dir/superlink.log``.
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    env = env or flower_env(tmp)
    reaper = ProcessReaper(env[HARNESS_TAG_VAR])
    log_path = tmp / "superlink.log"
    body_ok = False
    try:
        proc, address = _start_superlink(reaper, env, tmp, simulation=True, log_path=log_path)
        write_flower_config(env["FLWR_HOME"], address)
        yield SimulationSuperLink(tmp, env, reaper, proc, address, log_path)
        body_ok = True
    finally:
        _stop_all(reaper, term_timeout, raise_on_survivors=body_ok)


def run_simulation(app_dir: str | os.PathLike[str], tmp_dir: str | os.PathLike[str],
                   run_config: Mapping[str, Any] | None = None, num_supernodes: int = 2,
                   federation_config: Mapping[str, Any] | None = None,
                   timeout: float = 600) -> RunResult:
    """Run a Flower app once in simulation on a SuperLink of its own; stop everything.

    Starts ``flower-superlink --insecure --simulation`` on a free 127.0.0.1 port (cwd and
    logs in ``tmp_dir``), runs ``flwr run <app_dir> harness --run-config <toml>
    --federation-config "num-supernodes=N ..." --stream``, reads the final status with
    ``flwr list``, then stops the SuperLink, SuperExec, simulation and Ray processes
    (SIGTERM, SIGKILL after 5 s), also when the run fails or times out. ``result.pids``
    lists the processes seen; all are dead when this returns.
    """
    with simulation_superlink(tmp_dir) as link:
        result = link.submit(app_dir, run_config, num_supernodes, federation_config, timeout)
        superlink_pid = link.pid
    result.pids = sorted(set(result.pids) | set(link.reaper.seen) | {superlink_pid})
    return result


# --------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------
class Deployment:
    """A real SuperLink and SuperNodes started by :func:`deployment`.

    Attributes: ``address`` (SuperLink, also the SuperNodes' ``--superlink``),
    ``superlink`` (Popen), ``supernodes`` (Popens), ``node_ids`` (as logged by the
    SuperNodes), ``supernode_dirs`` (each node's cwd, also the ClientApp cwd), ``env``,
    ``reaper``.
    """

    def __init__(self, app_dir: Path, tmp_dir: Path, env: dict[str, str], reaper: ProcessReaper) -> None:
        self.app_dir, self.tmp_dir, self.env, self.reaper = app_dir, tmp_dir, env, reaper
        self.superlink: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self.supernode_dirs: list[Path] = []
        self.node_ids: list[int] = []
        self._runs = 0

    @property
    def pids(self) -> list[int]:
        """Every harness process seen so far (SuperLink, SuperNodes, SuperExecs, apps)."""
        self.reaper.snapshot()
        return sorted(self.reaper.seen)

    def submit(self, run_config: Mapping[str, Any] | None = None, timeout: float = 300) -> RunResult:
        """``flwr run`` the app on this deployment and wait for its final status."""
        self._runs += 1
        return _submit(self.env, self.reaper, self.app_dir, self.tmp_dir / "runs" / f"run-{self._runs}",
                       run_config, None, timeout)

    def superlink_log(self) -> str:
        """Return the SuperLink's output so far."""
        return _read(self.tmp_dir / "superlink.log")

    def supernode_logs(self) -> list[str]:
        """Return each SuperNode's output so far (ClientApp stdout lands here)."""
        return [_read(d / "supernode.log") for d in self.supernode_dirs]


@contextlib.contextmanager
def deployment(app_dir: str | os.PathLike[str], tmp_dir: str | os.PathLike[str],
               num_supernodes: int = 2, node_configs: list[Mapping[str, Any] | str] | None = None,
               startup_timeout: float = 60.0, term_timeout: float = 5.0) -> Iterator[Deployment]:
    """Start a deployment: a real SuperLink and ``num_supernodes`` SuperNodes; stop all on exit.

    SuperLink: ``flower-superlink --insecure --host 127.0.0.1 --port <free>`` (one HTTP
    port serves Fleet, Control and Runtime APIs), cwd ``tmp_dir``. SuperNode ``i``:
    ``flower-supernode --insecure --superlink <address> --port <free>
    --node-config <toml file>``, cwd and its own ``FLWR_HOME`` under
    ``tmp_dir/supernode-<i>`` (its ClientApp installs the app there). ``node_configs[i]``
    is a mapping (written as TOML, types kept) or a raw ``"k=v k2=v2"`` string; default
    ``{"partition-id": i, "num-partitions": num_supernodes}``. Waits until every SuperNode
    has logged its node id. Yields a :class:`Deployment`; use ``submit(run_config)``.
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    if node_configs is None:
        node_configs = [{"partition-id": i, "num-partitions": num_supernodes} for i in range(num_supernodes)]
    if len(node_configs) != num_supernodes:
        raise ValueError("need one node config per SuperNode")
    env = flower_env(tmp)
    reaper = ProcessReaper(env[HARNESS_TAG_VAR])
    dep = Deployment(Path(app_dir).resolve(), tmp, env, reaper)
    venv_bin = Path(env["PATH"].split(os.pathsep)[0])
    body_ok = False
    try:
        dep.superlink, dep.address = _start_superlink(
            reaper, env, tmp, simulation=False, log_path=tmp / "superlink.log")
        write_flower_config(env["FLWR_HOME"], dep.address)
        for i, node_cfg in enumerate(node_configs):
            node_dir = tmp / f"supernode-{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node_env = dict(env, FLWR_HOME=str(node_dir / "flwr_home"))
            if isinstance(node_cfg, str):
                cfg_arg = node_cfg
            else:
                cfg_arg = str(_write_toml(node_dir / "node_config.toml", node_cfg))
            cmd = [str(venv_bin / "flower-supernode"), "--insecure", "--superlink", dep.address,
                   "--port", str(free_port()), "--node-config", cfg_arg]
            dep.supernodes.append(reaper.spawn(cmd, env=node_env, cwd=node_dir,
                                               log_path=node_dir / "supernode.log"))
            dep.supernode_dirs.append(node_dir)
        deadline = time.monotonic() + startup_timeout
        while True:
            ids = [_NODE_ID_RE.search(_strip_ansi(_read(d / "supernode.log"))) for d in dep.supernode_dirs]
            if all(ids):
                dep.node_ids = [int(m.group(1)) for m in ids if m]
                break
            dead = [i for i, p in enumerate(dep.supernodes) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- supernode-{i} ---\n{t[-2000:]}" for i, t in enumerate(dep.supernode_logs()))
                raise FlowerHarnessError(f"SuperNodes not up (dead: {dead}):\n{logs}")
            time.sleep(0.2)
        yield dep
        body_ok = True
    finally:
        _stop_all(reaper, term_timeout, raise_on_survivors=body_ok)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` words to a run config; values are read as JSON where they parse
    (numbers, true/false), as strings otherwise."""
    cfg: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"run-config override {item!r} is not key=value")
        key, val = item.split("=", 1)
        try:
            cfg[key] = json.loads(val)
        except json.JSONDecodeError:
            cfg[key] = val
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m simulations.launch [--supernodes N] [key=value ...]``: the experiment as a
    real ``flwr run`` on a simulation SuperLink of its own, then the results table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    args = parser.parse_args(argv)
    app_dir = Path(__file__).resolve().parent.parent
    cfg = parse_overrides(args.overrides)
    here = Path.cwd()
    for key, default in (("output-dir", "results"), ("cache-dir", os.path.join(".cache", "sltestbed"))):
        cfg[key] = str((here / str(cfg.get(key, default))).resolve())  # relative to where this was typed
    work = here / ".flwr_runs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"flwr run {app_dir} with {args.supernodes} SuperNodes; overrides {cfg}", flush=True)
    cpus = int(args.cpus_per_client) if float(args.cpus_per_client).is_integer() else args.cpus_per_client
    result = run_simulation_with_echo(app_dir, work, cfg, args.supernodes, {"client-resources-num-cpus": cpus},
                                      args.timeout)
    print(f"run {result.run_id}: {result.status} in {result.seconds:.1f} s", flush=True)
    if not result.ok:
        print(result.status_details or result.stderr[-3000:], file=sys.stderr)
        return 1
    return 0


def run_simulation_with_echo(app_dir, tmp_dir, run_config, num_supernodes, federation_config, timeout) -> RunResult:
    with simulation_superlink(tmp_dir) as link:
        return link.submit(app_dir, run_config, num_supernodes, federation_config, timeout,
                           echo=lambda text: print(text, flush=True))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
