"""No silent reuse or overwrite of a run directory, and bad input named before anything starts:
the run-directory check of the ServerApp, `launch` and the sweep, on run directories written
here by hand (no Flower run)."""

import json
from pathlib import Path

import pytest

from app.results import RunDirectoryTaken, check_run_directory, stored_differences
from harness import launch, sweep
from sltestbed.experiment import ExperimentConfig

TINY = {"preset": "tiny", "num-rounds": 1}


def stored_run(directory: Path, run_config: dict, clients: int = 2, drop: tuple = ()) -> Path:
    """A finished run's config.json and summary.json, as app/results.py writes them."""
    directory.mkdir(parents=True)
    config = {k: v for k, v in ExperimentConfig.from_run_config(run_config).to_dict().items() if k not in drop}
    (directory / "config.json").write_text(json.dumps({"config": config, "clients": [{}] * clients}))
    (directory / "summary.json").write_text(json.dumps({"accuracy": 0.5}))
    return directory


def test_a_directory_of_the_same_config_is_reused_and_of_another_refused(tmp_path):
    cfg = ExperimentConfig.from_run_config(TINY)
    assert check_run_directory(tmp_path / "empty", cfg) is False
    run = stored_run(tmp_path / "run", {**TINY, "output-dir": "elsewhere", "cache-dir": "other"})
    assert check_run_directory(run, cfg, supernodes=2) is True  # where files go does not count
    with pytest.raises(RunDirectoryTaken, match=r"num-rounds: 1 there, 3 here.*choose another output-dir"):
        check_run_directory(run, ExperimentConfig.from_run_config({**TINY, "num-rounds": 3}))
    with pytest.raises(RunDirectoryTaken, match=r"supernodes: 2 there, 4 here"):
        check_run_directory(run, cfg, supernodes=4)


def test_a_key_the_stored_run_predates_counts_only_off_its_default(tmp_path):
    run = stored_run(tmp_path / "run", TINY, drop=("base-batch-size",))
    assert stored_differences(run, ExperimentConfig.from_run_config(TINY)) == {}
    assert stored_differences(run, ExperimentConfig.from_run_config({**TINY, "base-batch-size": 32})) == {
        "base-batch-size": ("(not recorded)", 32)}


@pytest.mark.parametrize("override, named", [
    ("num-round=2", "unknown run-config key(s) ['num-round']"),
    ("dataset=nope", "'dataset' = 'nope' is not a data set"),
    ("dataset=hf:/no/such/dir", "no such path '/no/such/dir'"),
    ("bits=9", "'bits' = 9"),
])
def test_launch_names_a_bad_key_or_value_in_one_line_before_starting_anything(override, named, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "run_simulation_with_echo", lambda *a, **k: pytest.fail("a SuperLink was started"))
    assert launch.main([override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and named in err and "\n" not in err


def test_launch_refuses_a_run_directory_of_another_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "run_simulation_with_echo", lambda *a, **k: pytest.fail("a SuperLink was started"))
    name = ExperimentConfig.from_run_config(TINY).name
    stored_run(tmp_path / "results" / name, TINY)
    assert launch.main(["preset=tiny", "num-rounds=2"]) == 2
    assert "holds a run of another config (num-rounds: 1 there, 2 here)" in capsys.readouterr().err


def test_a_sweep_point_of_another_config_is_never_counted_done(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    out = tmp_path / "runs"
    name = ExperimentConfig.from_run_config({**TINY, "quantizer": "fp16"}).name
    stored_run(out / name, {**TINY, "quantizer": "fp16"})
    assert sweep.main(["preset=tiny", "num-rounds=1", "--out", "runs", "--quantizer", "fp16", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["done", name]
    assert sweep.main(["preset=tiny", "num-rounds=5", "lr=0.01", "--out", "runs", "--quantizer", "fp16"]) == 2
    err = capsys.readouterr().err
    assert f"{out / name} holds a run of another config (lr: 0.002 there, 0.01 here, num-rounds: 1 there, 5 here)" in err
    assert "--replace-changed" in err


def test_run_sweep_refuses_points_of_another_config_before_running_any(tmp_path):
    out = tmp_path / "runs"
    name = ExperimentConfig.from_run_config({**TINY, "quantizer": "fp16"}).name
    stored_run(out / name, {**TINY, "quantizer": "fp16"})
    point = {**TINY, "quantizer": "fp16", "lr": 0.01, "output-dir": str(out)}
    with pytest.raises(ValueError, match=f"{name} \\(lr: 0.002 there, 0.01 here\\)"):
        sweep.run_sweep([(name, point)], out, work_dir=tmp_path / "work", log=lambda m: None)
    assert not (tmp_path / "work").exists()


def test_replacing_a_changed_point_keeps_the_old_run_beside(tmp_path):
    old = stored_run(tmp_path / "runs" / "point", TINY)
    moved = sweep.move_aside(old)
    assert not old.exists() and (moved / "summary.json").is_file() and moved.name.startswith("point.replaced-")


def checkpointed_run(directory: Path, run_config: dict, rnd: int = 1, partitions=(0, 1)) -> Path:
    """A killed run's checkpoint files, as strategies/checkpoint.py writes them (the .pt a stand-in)."""
    directory.mkdir(parents=True)
    config = ExperimentConfig.from_run_config(run_config).results_config()
    (directory / "checkpoint.pt").write_bytes(b"a stand-in")
    (directory / "checkpoint.json").write_text(json.dumps({"round": rnd, "num_rounds": 3, "config": config,
                                                           "partitions": list(partitions)}))
    return directory


def test_a_killed_point_resumes_and_a_checkpoint_of_another_config_is_refused(tmp_path, capsys):
    cfg = {**TINY, "num-rounds": 3}
    named = sweep.plan([cfg], tmp_path)
    name, point = named[0]
    checkpointed_run(tmp_path / name, cfg, rnd=2)
    assert sweep.stored_run(tmp_path, name, point, supernodes=2) is None  # to run: not done, not another's
    assert sweep.point_state(None, tmp_path / name) == "to run (resumes after round 2)"
    assert sweep.resumed(tmp_path / name, point) == ({**point, "resume": True}, 2)
    assert sweep.resumed(tmp_path / "other", point) == (point, 0)
    assert sweep.stored_run(tmp_path, name, point, supernodes=4) == {"supernodes": (2, 4)}
    other = {**point, "lr": 0.01}
    assert sweep.stored_run(tmp_path, name, other) == {"lr": (0.002, 0.01)}
    assert check_run_directory(tmp_path / name, ExperimentConfig.from_run_config(point)) is False
    with pytest.raises(RunDirectoryTaken, match=r"checkpoint of an unfinished run of another config \(lr: 0.002 there"):
        check_run_directory(tmp_path / name, ExperimentConfig.from_run_config(other))
    assert sweep.main([f"{k}={v}" for k, v in {**TINY, "num-rounds": 3}.items()] + ["--out", str(tmp_path),
                                                                                     "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("to run (resumes after round 2) " + name)
    keys = [f"{k}={v}" for k, v in {**TINY, "num-rounds": 3}.items()]  # keys on both sides of the flags
    assert sweep.main(keys[:1] + ["--out", str(tmp_path), "--dry-run"] + keys[1:]) == 0
    assert capsys.readouterr().out.startswith("to run (resumes after round 2) " + name)


def test_a_typo_is_named_before_torch_loads():
    """`launch` and `sweep` check key names and types with no torch, transformers or
    flwr-datasets imported (they take seconds to load): a typo is named at once."""
    import subprocess
    import sys

    code = ("import sys\nfrom harness import launch, sweep\nfrom sltestbed.experiment import ExperimentConfig\n"
            "try:\n    ExperimentConfig.from_run_config({'num-round': 2})\nexcept ValueError as e:\n    print(e)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'flwr_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "did you mean 'num-rounds'?" in out[0] and out[1] == "[]"


def test_the_config_modalities_are_the_models():
    from sltestbed import experiment, model

    assert experiment.MODALITIES == model.MODALITIES
