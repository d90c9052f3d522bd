"""Simulation runs end to end: our own SuperLink on a free port, ``flwr run --stream`` an app
against it, the final status read back, everything stopped.

* :func:`run_simulation` -- start ``flower-superlink --simulation`` on a free port, run an app,
  read the final status with ``flwr list --run-id ... --format json``, stop everything, return
  a :class:`RunResult`.
* :func:`simulation_superlink` -- the same SuperLink as a context manager, for several runs in
  a row (saves the ~2 s start-up per run).

Facts relied on (flwr 1.41, Linux):

* A SuperLink serves the Control, Fleet and Runtime(ServerAppIo) APIs over HTTP on ONE port
  (``--host``/``--port``). ``GET http://host:port/health`` answers 200 once it is up.
* ``flwr run --stream`` blocks until the run ends but exits 0 even when the run failed: the
  status must be read with ``flwr list``.
* The ServerApp runs with the SuperLink's working directory (here ``tmp_dir``); a relative path
  in the run config resolves there, NOT against the directory where ``flwr run`` was called.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sltestbed.threads import SERVER_THREADS_VAR, cpu_cores

from .flower_env import (CONNECTION_NAME, FlowerHarnessError, _format_kv, _read, _strip_ansi, _write_toml,
                         flower_env, flwr_cli, free_port, write_flower_config)
from .processes import HARNESS_TAG_VAR, ProcessReaper

# pytest: never collect anything from this module
__test__ = False

_RUN_ID_RE = re.compile(r"Successfully started run (\d+)")


@dataclass
class RunResult:
    """Outcome of one ``flwr run``.

    Attributes
    ----------
    run_id : int | None
        The run id the SuperLink assigned (None when submission failed).
    status : str
        Final status: ``"finished:completed"``, ``"finished:failed"``,
        ``"finished:stopped"``, or harness-made ``"submit-failed"`` / ``"timeout"`` / ``"interrupted"``.
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
    peak_memory_bytes, peak_processes : int
        Where the run was watched (`harness.processes.MemoryWatch`, by `launch`): the peak
        summed proportional set size of the harness's processes, and their number then.
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
    peak_memory_bytes: int = 0
    peak_processes: int = 0

    def describe(self) -> str:
        """Return a multi-line summary for assertion messages."""
        return (
            f"run {self.run_id}: {self.status} ({self.status_details}) "
            f"rc={self.returncode} in {self.seconds:.1f}s\n$ {' '.join(self.command)}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


# --------------------------------------------------------------------------------------
# SuperLink
# --------------------------------------------------------------------------------------
def _health_ok(address: str, ca_cert: Path | None = None) -> bool:
    """The SuperLink answers /health (over TLS, verified against `ca_cert`, where it has one)."""
    scheme, context = ("http", None) if ca_cert is None else ("https", ssl.create_default_context(cafile=str(ca_cert)))
    try:
        with urllib.request.urlopen(f"{scheme}://{address}/health", timeout=0.5, context=context) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _start_superlink(reaper: ProcessReaper, env: Mapping[str, str], cwd: Path, *,
                     simulation: bool, log_path: Path, startup_timeout: float = 30.0,
                     attempts: int = 3, credentials=None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``flower-superlink`` on a free port; wait for /health. `credentials`
    (`harness.credentials.Credentials`): TLS with its certificates and SuperNode
    authentication (only registered SuperNodes connect); None: ``--insecure``."""
    venv_bin = Path(env["PATH"].split(os.pathsep)[0])
    if credentials is None:
        security = ["--insecure"]
    else:
        security = ["--ssl-ca-certfile", str(credentials.ca_cert), "--ssl-certfile", str(credentials.server_cert),
                    "--ssl-keyfile", str(credentials.server_key), "--enable-supernode-auth"]
    last_err = ""
    for _ in range(attempts):
        port = free_port()
        cmd = [str(venv_bin / "flower-superlink"), *security, "--host", "127.0.0.1",
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
            if _health_ok(address, None if credentials is None else credentials.ca_cert):
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
            federation_config: Mapping[str, Any] | None, timeout: float, echo=None,
            should_stop=None) -> RunResult:
    """``flwr run --stream`` the app against the config.toml default; wait for the end, or
    until ``should_stop()`` says so (status "interrupted")."""
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
    stopped = False
    while proc.poll() is None and time.monotonic() < deadline:
        if should_stop is not None and should_stop():
            stopped = True
            break
        if time.monotonic() - last_scan > 1.0:
            seen_pids |= reaper.snapshot(scan_env=False)
            last_scan = time.monotonic()
            if echo is not None:
                echoed = _echo_new(out_path, echoed, echo)
        time.sleep(0.1)
    if echo is not None:
        _echo_new(out_path, echoed, echo)
    timed_out = proc.poll() is None and not stopped
    stream_seconds = time.monotonic() - t0
    if stopped:  # the caller stops the SuperLink and all it started; leave nothing to wait for
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return RunResult(run_id=None, status="interrupted", ok=False, returncode=proc.returncode,
                         stdout=_read(out_path), stderr=_read(err_path), logs="", command=cmd,
                         stream_seconds=stream_seconds, seconds=time.monotonic() - t0,
                         pids=sorted(seen_pids))
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


def client_resources(cpus: float = 1, gpus: float = 0) -> dict:
    """Flower's simulation resources per ClientApp actor (`--federation-config` keys): CPUs,
    and where asked a GPU share (Ray then places the actors on the GPUs; a node's `device`
    key decides whether its role uses one)."""
    if cpus <= 0 or gpus < 0:
        raise ValueError(f"client resources: cpus must be > 0 and gpus >= 0, got {cpus}, {gpus}")

    def whole(x):
        return int(x) if float(x).is_integer() else float(x)

    out = {"client-resources-num-cpus": whole(cpus)}
    if gpus:
        out["client-resources-num-gpus"] = whole(gpus)
    return out


@dataclass(frozen=True)
class ThreadPlan:
    """How one run's compute threads fit the cores it is given: Ray offers the ClientApp actors
    `ray_cpus` CPUs (each actor computes on floor(its CPUs) threads, at least 1: Ray's
    OMP_NUM_THREADS, which the ClientApp applies), the ServerApp computes on `server_threads`
    (`sltestbed.threads.SERVER_THREADS_VAR` in the SuperLink's environment)."""

    cores: int
    ray_cpus: int
    server_threads: int
    cpus_per_client: float

    @property
    def client_threads(self) -> int:
        """Threads of the actors that can run at once (more with fractional CPUs per client)."""
        actors = int(self.ray_cpus // self.cpus_per_client)
        return actors * max(1, int(self.cpus_per_client))

    def federation(self, gpus_per_client: float = 0, attached: bool = False) -> dict:
        """`--federation-config` keys; attached to a cluster, its nodes decide the CPUs (Ray
        refuses init-args-num-cpus then)."""
        out = client_resources(self.cpus_per_client, gpus_per_client)
        return out if attached else {**out, "init-args-num-cpus": self.ray_cpus}

    def env(self, ray_address: str | None = None) -> dict[str, str]:
        """What the SuperLink's environment adds for this run: the ServerApp's threads and, to
        attach the simulation to a Ray cluster, its address (inherited by the simulation)."""
        return {SERVER_THREADS_VAR: str(self.server_threads), **({"RAY_ADDRESS": ray_address} if ray_address else {})}

    def describe(self) -> str:
        return (f"threads: the ServerApp {self.server_threads}, the ClientApp actors {self.client_threads} "
                f"({self.ray_cpus} Ray CPU{'s' if self.ray_cpus != 1 else ''}, {self.cpus_per_client:g} each) on "
                f"{self.cores} core{'s' if self.cores != 1 else ''}")


def thread_plan(cpus_per_client: float = 1, jobs: int = 1, cores: int | None = None) -> ThreadPlan:
    """Split the cores (default: this process's) among `jobs` runs at once, and each run's share
    between its ClientApp actors and its ServerApp: the actors get all but one core of the
    share (at least their CPUs per client), the ServerApp what is left, at least 1 thread. With
    whole CPUs per client no run starts more compute threads than its share of the cores,
    unless the share is one core (then client and server, which take turns within a split
    step, hold a thread each) or a client asks for more CPUs than the share has."""
    if cpus_per_client <= 0 or jobs < 1:
        raise ValueError(f"thread plan: cpus per client must be > 0 and jobs >= 1, got {cpus_per_client}, {jobs}")
    total = cores or cpu_cores()
    share = max(1, total // jobs)
    ray = max(math.ceil(cpus_per_client), share - 1)
    return ThreadPlan(share, ray, max(1, share - ray), cpus_per_client)


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
               timeout: float = 600, echo=None, should_stop=None) -> RunResult:
        """Run ``app_dir`` with ``num_supernodes`` simulated nodes; wait for the end
        (``echo``: a function that gets the run's output lines as they come).

        ``run_config`` keys must exist in the app's ``[tool.flwr.app.config]``; values keep
        their types (they travel as a TOML file). ``federation_config`` adds
        ``--federation-config`` keys, e.g. ``{"client-resources-num-cpus": 1}``.
        ``should_stop()``: asked every 0.1 s; True ends the run's `flwr run` at once (status
        "interrupted"; leaving the context manager stops the rest).
        """
        fed = {"num-supernodes": int(num_supernodes), **dict(federation_config or {})}
        self._runs += 1
        return _submit(self.env, self.reaper, app_dir, self.tmp_dir / "runs" / f"run-{self._runs}",
                       run_config, fed, timeout, echo, should_stop)

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
