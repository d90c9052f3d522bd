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

from .credentials import Credentials, make_credentials
from .flower_env import (CONNECTION_NAME, FlowerHarnessError, _read, _strip_ansi, _write_toml, flower_env, flwr_cli,
                         free_port, write_flower_config)
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

    def __init__(self, app_dir: Path, tmp_dir: Path, env: dict[str, str], reaper: ProcessReaper,
                 credentials: Credentials | None = None) -> None:
        self.app_dir, self.tmp_dir, self.env, self.reaper = app_dir, tmp_dir, env, reaper
        self.credentials = credentials
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

    def start_supernode(self, node_config: Mapping[str, Any] | str, key: Path | None = None) -> subprocess.Popen[bytes]:
        """Start one more ``flower-supernode`` (its cwd and FLWR_HOME in ``supernode-<i>``):
        insecure on an insecure deployment; on a secure one over TLS, authenticated with the
        private `key` (None: none, which an authenticating SuperLink refuses)."""
        i = len(self.supernodes)
        node_dir = self.tmp_dir / f"supernode-{i}"
        node_dir.mkdir(parents=True, exist_ok=True)
        node_env = dict(self.env, FLWR_HOME=str(node_dir / "flwr_home"))
        cfg_arg = node_config if isinstance(node_config, str) else str(_write_toml(node_dir / "node_config.toml",
                                                                                   node_config))
        if self.credentials is None:
            security = ["--insecure"]
        else:
            security = ["--root-certificates", str(self.credentials.ca_cert)]
            security += ["--auth-supernode-private-key", str(key)] if key is not None else []
        venv_bin = Path(self.env["PATH"].split(os.pathsep)[0])
        cmd = [str(venv_bin / "flower-supernode"), *security, "--superlink", self.address,
               "--port", str(free_port()), "--node-config", cfg_arg]
        proc = self.reaper.spawn(cmd, env=node_env, cwd=node_dir, log_path=node_dir / "supernode.log")
        self.supernodes.append(proc)
        self.supernode_dirs.append(node_dir)
        return proc

    def register(self, public_key: Path) -> str:
        """``flwr supernode register <key.pub>``: the SuperLink admits the SuperNode holding the
        private half. Returns flwr's output."""
        result = flwr_cli(["supernode", "register", str(public_key), CONNECTION_NAME], self.env, timeout=60,
                          cwd=self.tmp_dir)
        if result.returncode != 0:
            raise FlowerHarnessError(f"flwr supernode register {public_key} failed: {result.stdout}{result.stderr}")
        return result.stdout


@contextlib.contextmanager
def deployment(app_dir: str | os.PathLike[str], tmp_dir: str | os.PathLike[str],
               num_supernodes: int = 2, node_configs: list[Mapping[str, Any] | str] | None = None,
               startup_timeout: float = 60.0, term_timeout: float = 5.0,
               secure: bool = False) -> Iterator[Deployment]:
    """Start a deployment: a real SuperLink and ``num_supernodes`` SuperNodes; stop all on exit.

    SuperLink: ``flower-superlink --insecure --host 127.0.0.1 --port <free>`` (one HTTP
    port serves Fleet, Control and Runtime APIs), cwd ``tmp_dir``. SuperNode ``i``:
    ``flower-supernode --insecure --superlink <address> --port <free>
    --node-config <toml file>``, cwd and its own ``FLWR_HOME`` under
    ``tmp_dir/supernode-<i>`` (its ClientApp installs the app there). ``node_configs[i]``
    is a mapping (written as TOML, types kept) or a raw ``"k=v k2=v2"`` string; default
    ``{"partition-id": i, "num-partitions": num_supernodes}``. Waits until every SuperNode
    has logged its node id. Yields a :class:`Deployment`; use ``submit(run_config)``.

    ``secure``: throw-away credentials in ``tmp_dir/credentials`` (`harness.credentials`);
    the SuperLink serves TLS and admits registered SuperNodes only; each SuperNode's public
    key is registered (``flwr supernode register``) before it starts with its private key,
    and ``flwr`` verifies the SuperLink against the CA.
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    if node_configs is None:
        node_configs = [{"partition-id": i, "num-partitions": num_supernodes} for i in range(num_supernodes)]
    if len(node_configs) != num_supernodes:
        raise ValueError("need one node config per SuperNode")
    env = flower_env(tmp)
    reaper = ProcessReaper(env[HARNESS_TAG_VAR])
    credentials = make_credentials(tmp / "credentials", num_supernodes) if secure else None
    dep = Deployment(Path(app_dir).resolve(), tmp, env, reaper, credentials)
    body_ok = False
    try:
        dep.superlink, dep.address = _start_superlink(
            reaper, env, tmp, simulation=False, log_path=tmp / "superlink.log", credentials=credentials)
        write_flower_config(env["FLWR_HOME"], dep.address, root_certificates=credentials and credentials.ca_cert)
        for i, node_cfg in enumerate(node_configs):
            key = None
            if credentials is not None:
                key = credentials.node_keys[i]
                dep.register(key.with_suffix(".pub"))
            dep.start_supernode(node_cfg, key)
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
