"""The environment of every Flower process the harness starts, and the ``flwr`` command line.

:func:`flower_env` gives each harness its own ``FLWR_HOME``, no runtime ``uv sync`` of app
dependencies, no update check, no telemetry, the venv's ``bin`` first on ``PATH``, and a tag
variable by which every process started with it (and everything it spawns) is found again.
``flwr`` reads connections from ``$FLWR_HOME/config.toml``; a connection with an explicit
``address`` is never auto-started (only ``:local:`` is): :func:`write_flower_config` writes one
whose default connection is the harness's SuperLink, so nothing touches 127.0.0.1:39091.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .processes import HARNESS_TAG_VAR

# pytest: never collect anything from this module
__test__ = False

#: Name of the SuperLink connection the harness writes into ``$FLWR_HOME/config.toml``.
CONNECTION_NAME = "harness"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class FlowerHarnessError(RuntimeError):
    """A Flower process of the harness could not be started or reached."""


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


def git_commit(directory: str | os.PathLike[str] | None = None) -> str:
    """The commit of the checkout holding this harness ("-dirty" with uncommitted changes to
    tracked files), or "" outside a git checkout: runs record it in config.json."""
    where = str(directory or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


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
            "SLTESTBED_GIT_COMMIT": git_commit(),
            HARNESS_TAG_VAR: uuid.uuid4().hex,
        }
    )
    if extra:
        env.update(extra)
    return env


def write_flower_config(flwr_home: str | os.PathLike[str], address: str, name: str = CONNECTION_NAME,
                        root_certificates: str | os.PathLike[str] | None = None) -> Path:
    """Write ``<flwr_home>/config.toml`` with one connection, the default: insecure, or over
    TLS verified against ``root_certificates`` (an absolute path, as flwr requires).

    The file has no ``:local:`` connection, so no ``flwr`` call can auto-start a SuperLink.
    Returns the path written.
    """
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    security = ("insecure = true\n" if root_certificates is None
                else f'root-certificates = "{Path(root_certificates).resolve()}"\n')
    path.write_text(
        "[superlink]\n"
        f'default = "{name}"\n\n'
        f"[superlink.{name}]\n"
        f'address = "{address}"\n'
        + security,
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
