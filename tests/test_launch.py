"""End-to-end checks of the Flower harness (harness/superlink.py, deployment.py, processes.py,
flower_env.py) on a tiny throwaway Flower app.

The app (module ``harness_echo_app``, written into a tmp dir per test) has a ServerApp that
sends one ``train.echo`` message per node for ``num-rounds`` rounds and writes what came
back, plus its run config (with Python types) and working directory, to the JSON file at
run-config ``out-file``. Its ClientApp answers with its node_config partition id and
``y = 2 * x``. Run only these: ``pytest -m flower``; skip them: ``pytest -m "not flower"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.deployment import deployment  # noqa: E402
from harness.flower_env import FlowerHarnessError, find_venv_bin, flower_env  # noqa: E402
from harness.processes import HARNESS_TAG_VAR, pid_alive  # noqa: E402
from harness.superlink import run_simulation, simulation_superlink  # noqa: E402

pytestmark = pytest.mark.flower

try:
    find_venv_bin()
except FlowerHarnessError as _err:  # pragma: no cover - environment without flwr
    pytestmark = [pytest.mark.flower, pytest.mark.skip(reason=str(_err))]


APP_MODULE = "harness_echo_app"

PYPROJECT = f"""\
[project]
name = "harness-echo-app"
version = "0.1.0"
description = "Throwaway app for tests/test_launch.py"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "sltestbed"

[tool.flwr.app.components]
serverapp = "{APP_MODULE}.server_app:app"
clientapp = "{APP_MODULE}.client_app:app"

[tool.flwr.app.config]
out-file = "echo.json"
num-rounds = 2
base = 100
min-nodes = 2
scale = 0.5
flag = false
fail = false
sleep-after-first-round = 0.0
"""

SERVER_APP = '''\
"""ServerApp: echo rounds, then write a JSON report to run-config `out-file`."""
import json
import os
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    print("HARNESS-SERVER-PRINT cwd=" + os.getcwd(), flush=True)
    if cfg["fail"]:
        raise RuntimeError("harness-echo asked to fail")
    need = int(cfg["min-nodes"])
    t0 = time.time()
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < need and time.time() - t0 < 60:
        time.sleep(0.5)
        node_ids = sorted(grid.get_node_ids())
    rounds = []
    for rnd in range(int(cfg["num-rounds"])):
        msgs = [
            Message(
                content=RecordDict({"cfg": ConfigRecord({"x": int(cfg["base"]) + 10 * rnd + i})}),
                dst_node_id=nid,
                message_type="train.echo",
                group_id=str(rnd),
            )
            for i, nid in enumerate(node_ids)
        ]
        sent = {m.metadata.dst_node_id: m.content["cfg"]["x"] for m in msgs}
        got = []
        for rep in grid.send_and_receive(msgs, timeout=120):
            if rep.has_error():
                got.append({"error": str(rep.error)})
                continue
            rec = rep.content["echo"]
            item = {k: rec[k] for k in rec.keys()}
            item["node-id"] = rep.metadata.src_node_id
            item["sent-x"] = sent[rep.metadata.src_node_id]
            got.append(item)
        rounds.append(got)
        if rnd == 0 and float(cfg["sleep-after-first-round"]) > 0:
            time.sleep(float(cfg["sleep-after-first-round"]))
    report = {
        "run_config": {k: [v, type(v).__name__] for k, v in cfg.items()},
        "cwd": os.getcwd(),
        "node_ids": node_ids,
        "rounds": rounds,
    }
    with open(cfg["out-file"], "w", encoding="utf-8") as fh:
        json.dump(report, fh)
'''

CLIENT_APP = '''\
"""ClientApp: answer `train.echo` with partition id, x and 2x."""
import os

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train("echo")
def echo(msg: Message, context: Context) -> Message:
    x = int(msg.content["cfg"]["x"])
    pid = int(context.node_config["partition-id"])
    print(f"HARNESS-CLIENT-PRINT partition={pid} x={x} cwd={os.getcwd()}", flush=True)
    rec = MetricRecord({"partition-id": pid, "x": x, "y": 2 * x})
    return Message(RecordDict({"echo": rec}), reply_to=msg)
'''


def write_echo_app(root: Path) -> Path:
    """Write the throwaway app under ``root/app`` and return its directory."""
    app_dir = root / "app"
    pkg = app_dir / APP_MODULE
    pkg.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "server_app.py").write_text(textwrap.dedent(SERVER_APP), encoding="utf-8")
    (pkg / "client_app.py").write_text(textwrap.dedent(CLIENT_APP), encoding="utf-8")
    return app_dir


def check_echo_report(out_file: Path, num_nodes: int, num_rounds: int, base: int) -> dict:
    """Assert on the ServerApp's JSON report; return it."""
    assert out_file.exists(), f"ServerApp wrote no {out_file}"
    report = json.loads(out_file.read_text(encoding="utf-8"))
    assert len(report["node_ids"]) == num_nodes
    assert len(report["rounds"]) == num_rounds
    for rnd, replies in enumerate(report["rounds"]):
        assert all("error" not in r for r in replies), replies
        assert sorted(r["partition-id"] for r in replies) == list(range(num_nodes))
        assert sorted(r["x"] for r in replies) == [base + 10 * rnd + i for i in range(num_nodes)]
        for r in replies:
            assert r["x"] == r["sent-x"]
            assert r["y"] == 2 * r["x"]
    return report


def assert_all_dead(pids) -> None:
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"still alive: {alive}"


def test_flower_env_is_isolated(tmp_path):
    env = flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path.resolve() / "flwr_home")
    assert Path(env["FLWR_HOME"]).is_dir()
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    first = Path(env["PATH"].split(os.pathsep)[0])
    assert (first / "flwr").exists() and (first / "flower-superlink").exists()
    assert env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] != "39091"
    assert "RAY_ADDRESS" not in env
    assert env[HARNESS_TAG_VAR] != flower_env(tmp_path)[HARNESS_TAG_VAR]
    assert os.environ.get("FLWR_HOME") != env["FLWR_HOME"]  # os.environ untouched


def test_simulation_echo(tmp_path):
    app_dir = write_echo_app(tmp_path)
    out_file = tmp_path / "out" / "echo.json"
    out_file.parent.mkdir()
    res = run_simulation(
        app_dir, tmp_path / "sim",
        run_config={"out-file": str(out_file), "num-rounds": 2, "base": 7, "scale": 2.5, "flag": True},
        num_supernodes=2, timeout=120,
    )
    assert res.ok, res.describe()
    assert res.status == "finished:completed"
    assert isinstance(res.run_id, int)
    report = check_echo_report(out_file, num_nodes=2, num_rounds=2, base=7)
    # run config keeps TOML types: ints, floats, bools, strings
    assert report["run_config"]["base"] == [7, "int"]
    assert report["run_config"]["scale"] == [2.5, "float"]
    assert report["run_config"]["flag"] == [True, "bool"]
    assert report["run_config"]["out-file"] == [str(out_file), "str"]
    # the ServerApp runs in the SuperLink's cwd, which the harness sets to tmp_dir
    assert report["cwd"] == str((tmp_path / "sim").resolve())
    # ServerApp stdout and (via Ray) ClientApp stdout come back in the streamed logs
    assert "HARNESS-SERVER-PRINT" in res.logs
    assert "HARNESS-CLIENT-PRINT" in res.logs
    assert res.run_info.get("status") == "finished:completed"
    # flwr talked to our own SuperLink (explicit address), never to a :local: one on 39091
    config = (tmp_path / "sim" / "flwr_home" / "config.toml").read_text(encoding="utf-8")
    assert ":local:" not in config and "127.0.0.1:39091" not in config
    assert "Using SuperLink: harness (127.0.0.1:" in res.stdout
    assert res.pids, "harness saw no processes"
    assert_all_dead(res.pids)


def test_simulation_failure_and_reuse(tmp_path):
    """A failing ServerApp is reported as failed (``--stream`` itself exits 0); the same
    SuperLink then serves another run with 3 nodes and a relative out-file."""
    app_dir = write_echo_app(tmp_path)
    with simulation_superlink(tmp_path / "sim") as link:
        bad = link.submit(app_dir, {"fail": True}, num_supernodes=2, timeout=120)
        assert bad.status == "finished:failed", bad.describe()
        assert not bad.ok
        assert bad.returncode == 0  # flwr run --stream does not reflect the run status
        assert "harness-echo asked to fail" in bad.status_details + bad.logs
        good = link.submit(app_dir, {"out-file": "rel.json", "min-nodes": 3, "num-rounds": 1},
                           num_supernodes=3, timeout=120)
        assert good.ok, good.describe()
        pids = list(link.reaper.seen) + [link.pid]
    # relative paths resolve against the SuperLink's cwd (tmp_dir), not flwr run's cwd
    check_echo_report(tmp_path / "sim" / "rel.json", num_nodes=3, num_rounds=1, base=100)
    assert_all_dead(pids)


def test_simulation_timeout_stops_everything(tmp_path):
    app_dir = write_echo_app(tmp_path)
    out_file = tmp_path / "never.json"
    res = run_simulation(
        app_dir, tmp_path / "sim",
        run_config={"out-file": str(out_file), "sleep-after-first-round": 300.0},
        timeout=25,
    )
    assert res.status == "timeout", res.describe()
    assert not res.ok
    assert not out_file.exists()
    assert len(res.pids) >= 3  # SuperLink, SuperExec, flwr run, simulation, Ray, ...
    assert_all_dead(res.pids)


def test_deployment_echo(tmp_path):
    app_dir = write_echo_app(tmp_path)
    out_file = tmp_path / "dep_echo.json"
    node_configs = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with deployment(app_dir, tmp_path / "dep", num_supernodes=2, node_configs=node_configs) as dep:
        assert len(dep.node_ids) == 2
        res = dep.submit({"out-file": str(out_file), "num-rounds": 2, "base": 40}, timeout=120)
        assert res.ok, res.describe() + "\n" + "\n".join(dep.supernode_logs())
        report = check_echo_report(out_file, num_nodes=2, num_rounds=2, base=40)
        assert sorted(report["node_ids"]) == sorted(dep.node_ids)
        logs = dep.supernode_logs()
        # in a deployment, ClientApp stdout goes to the SuperNode's output
        for i, text in enumerate(logs):
            assert f"HARNESS-CLIENT-PRINT partition={i}" in text
            assert f"cwd={dep.supernode_dirs[i]}" in text
        pids = dep.pids
        assert len(pids) >= 6  # SuperLink + SuperExec, 2 x (SuperNode + SuperExec)
    assert_all_dead(pids)


def test_credentials_name_the_superlink_hosts_and_make_openssh_node_keys(tmp_path):
    """`python -m harness.credentials DIR --host ...`: the SuperLink's certificate carries each
    host as a DNS name or an IP address and is signed by the CA; node keys are OpenSSH EC keys
    (what `flwr supernode register` takes); a negative count is refused by name."""
    import subprocess

    from cryptography import x509

    out = subprocess.run([sys.executable, "-m", "harness.credentials", str(tmp_path / "c"), "--supernodes", "2",
                          "--host", "sl.example.org", "--host", "10.0.0.5"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["sl.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    cert.verify_directly_issued_by(ca)
    pubs = sorted(p.name for p in (tmp_path / "c").glob("supernode-*.pub"))
    assert pubs == ["supernode-0.pub", "supernode-1.pub"]
    assert (tmp_path / "c" / "supernode-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    bad = subprocess.run([sys.executable, "-m", "harness.credentials", str(tmp_path / "d"), "--supernodes", "-1"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert bad.returncode == 2 and "--supernodes must be >= 0" in bad.stderr


def test_the_memory_watch_sums_the_tagged_processes_and_keeps_the_peak(tmp_path):
    """Two tagged children holding about 150 and 100 MiB: the watch's peak covers both (and
    the processes it counted), and nothing else on the machine (no untagged process)."""
    import time as _time

    from harness.processes import MemoryWatch, ProcessReaper

    env = flower_env(tmp_path)
    reaper = ProcessReaper(env[HARNESS_TAG_VAR])
    hold = "import time; b = bytearray({} * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"
    try:
        for mib in (150, 100):
            reaper.spawn([sys.executable, "-c", hold.format(mib)], env=env, cwd=tmp_path,
                         log_path=tmp_path / f"hold-{mib}.log")
        _time.sleep(3)
        watch = MemoryWatch(reaper)
        total = watch.sample()
        assert watch.peak_bytes == total and watch.peak_processes == 2
        assert 250 * 2**20 <= total < 400 * 2**20, total / 2**20
    finally:
        reaper.stop()


def test_a_harness_killed_by_sigkill_leaves_none_of_its_processes(tmp_path):
    """SIGKILL reaches no handler: the reaper's guard still stops what the harness started,
    its child and the child's own children (before, a killed sweep's SuperLinks, simulations
    and Ray agents ran on)."""
    import signal
    import subprocess
    import time as _time

    from harness.processes import PARENT_DEATH_SIGNAL

    if not PARENT_DEATH_SIGNAL:
        pytest.skip("no setpriv on this machine")
    harness = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from harness.flower_env import flower_env
        from harness.processes import HARNESS_TAG_VAR, ProcessReaper
        tmp = Path({str(tmp_path)!r})
        env = flower_env(tmp)
        reaper = ProcessReaper(env[HARNESS_TAG_VAR])
        proc = reaper.spawn(["sh", "-c", "sleep 61 & echo $! > grandchild; exec sleep 60"], env=env, cwd=tmp,
                            log_path=tmp / "sleep.log")
        print(proc.pid, reaper._guard.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", harness], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        child, guard = map(int, parent.stdout.readline().split())
        started = _time.monotonic()

        def ready():  # the child runs its command; the guard waits for its signal (or 2 s, unseen)
            waiting = "sigtimedwait" in Path(f"/proc/{guard}/wchan").read_text() or _time.monotonic() > started + 2
            return (Path(f"/proc/{child}/comm").read_text().strip() == "sleep"
                    and (tmp_path / "grandchild").is_file() and (tmp_path / "grandchild").read_text().endswith("\n")
                    and waiting)

        while not ready():
            assert _time.monotonic() < started + 10
            _time.sleep(0.01)
        pids = [child, int((tmp_path / "grandchild").read_text())]
        assert all(pid_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = _time.monotonic() + 15
        while any(pid_alive(p) for p in pids) and _time.monotonic() < deadline:
            _time.sleep(0.1)
        assert not [p for p in pids if pid_alive(p)], "outlived their killed harness"
        assert not pid_alive(guard)  # its work done
    finally:
        parent.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_latency_benchmark_prints_each_path_and_its_ratio(capsys):
    """In-process only (the Flower paths are what the command is for, and take minutes): the
    table has the path, its step and round figures and ratios of 1.00 to itself; a bad path or
    key is named before anything runs."""
    from harness import latency_bench

    assert latency_bench.main(["--paths", "in-process", "num-rounds=1", "benchmark-roundtrips=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].split()[:3] == ["path", "step", "s"]
    row = lines[-1].split()
    assert row[0] == "in-process" and row[-3:] == ["1.00", "1.00", "1.00"] and float(row[1]) > 0
    with pytest.raises(SystemExit):
        latency_bench.main(["--paths", "in-process,warp"])
    assert "--paths: ['warp'] not among" in capsys.readouterr().err
    assert latency_bench.main(["--paths", "in-process", "num-round=1"]) == 2
    assert "unknown run-config key(s) ['num-round']" in capsys.readouterr().err


@pytest.mark.parametrize("cores, jobs, cpus, ray, server, clients", [
    (2, 1, 1, 1, 1, 1),    # this machine: one actor, the ServerApp on the other core
    (16, 1, 1, 15, 1, 15),
    (16, 2, 1, 7, 1, 7),   # --jobs 2: 8 cores a run
    (16, 1, 4, 15, 1, 12),  # 3 actors of 4 threads fit in 15 CPUs
    (2, 2, 1, 1, 1, 1),    # one core a run: client and server take turns within a step
    (4, 1, 8, 8, 1, 8),    # a client that asks for more CPUs than there are gets them (asked for)
])
def test_the_thread_plan_divides_the_cores(cores, jobs, cpus, ray, server, clients):
    from harness.superlink import thread_plan

    plan = thread_plan(cpus, jobs, cores)
    assert (plan.ray_cpus, plan.server_threads, plan.client_threads) == (ray, server, clients)
    assert plan.federation()["init-args-num-cpus"] == ray and "init-args-num-cpus" not in plan.federation(attached=True)
    if cores // jobs >= 2 and cpus <= cores // jobs - 1:
        assert plan.server_threads + plan.client_threads <= cores // jobs
    with pytest.raises(ValueError, match="cpus per client must be > 0"):
        thread_plan(0, 1, cores)
