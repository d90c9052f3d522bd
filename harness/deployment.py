"""A deployment on this machine: a real (non-simulation) SuperLink and N ``flower-supernode``
processes, each with its own ``--node-config``; ``submit(run_config)`` runs the app on them.
In a deployment a ClientApp runs in its SuperNode's directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .flower_env import FlowerHarnessError, _read, _strip_ansi, _write_toml, flower_env, free_port, write_flower_config
from .processes import HARNESS_TAG_VAR, ProcessReaper
from .superlink import RunResult, _start_superlink, _stop_all, _submit

# pytest: never collect anything from this module
__test__ = False

_NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")


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
