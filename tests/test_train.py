import json
from pathlib import Path

import pytest

from sltestbed import train
from sltestbed.model import TinyLlava, preset
from sltestbed.trainer import Stage, set_trainable, stage_regime

TINY = ["--preset", "tiny", "--quiet", "--batch-size", "128", "--test-fraction", "0.85", "--public-fraction", "0.05"]  # 720 training questions


def test_centralized_reference_is_the_cached_base_model(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = TINY + ["--base-epochs", "2", "--cache-dir", str(tmp_path / "cache")]
    summary = train.main(args + ["--json", str(out)])
    data = json.loads(out.read_text())
    assert data["accuracy"] == summary["accuracy"]
    assert 0 <= data["accuracy"] <= 1 and data["seconds"] > 0
    assert set(data["accuracy_by_type"]) == {"digit", "parity", "greater", "less"}
    run = data["runs"][0]
    assert run["mode"] == "centralized" and run["losses"][1] < run["losses"][0]
    assert [p.parent for p in (tmp_path / "cache").glob("base-*/model.safetensors")] == [Path(run["model"])]
    capsys.readouterr()
    again = train.main(args)  # the second time it is read from the cache, not trained again
    assert "cached" in capsys.readouterr().err and again["runs"][0]["losses"] == run["losses"]
    assert again["accuracy"] == summary["accuracy"]


def test_same_seed_same_result(tmp_path):
    a = train.main(TINY + ["--base-epochs", "1", "--seed", "3", "--cache-dir", str(tmp_path / "a")])
    b = train.main(TINY + ["--base-epochs", "1", "--seed", "3", "--cache-dir", str(tmp_path / "b")])
    assert a["runs"][0]["losses"] == b["runs"][0]["losses"] and a["accuracy"] == b["accuracy"]


def test_split_runs_start_from_a_cached_base(tmp_path, capsys):
    args = TINY + ["--cache-dir", str(tmp_path), "--base-epochs", "1", "--epochs", "2",
                   "--quantizer", "learned", "uniform", "--bits", "2", "--reference", "fp32"]
    summary = train.main(args)
    assert [(r["quantizer"], r["bits"]) for r in summary["runs"]] == [("learned", 2), ("uniform", 2), ("fp32", 32)]
    assert all(0 <= r["accuracy"] <= 1 and len(r["losses"]) == 2 for r in summary["runs"])
    assert len(list(tmp_path.glob("base-*/model.safetensors"))) == 1
    capsys.readouterr()
    train.main(args[:-7] + ["--quantizer", "learned", "--bits", "1"])
    assert "cached" in capsys.readouterr().err


def test_two_stage_regime_freezes_the_language_model_first():
    model = TinyLlava(preset("tiny", quantizer="learned", bits=2))
    align, finetune = stage_regime("two-stage", 4, 1e-3)
    trained = {id(p) for p in set_trainable(model, align.trains)}
    assert not any(id(p) in trained for p in model.lm.parameters())
    assert not any(id(p) in trained for p in model.vision.parameters())
    assert all(id(p) in trained for p in model.connector.parameters())
    assert all(id(p) in trained for p in model.quant_encoders.parameters())
    trained = {id(p) for p in set_trainable(model, finetune.trains)}
    assert all(id(p) in trained for p in model.lm.parameters())
    assert all(p.requires_grad == (id(p) in trained) for p in model.parameters())
    assert finetune.lr < align.lr and align.epochs + finetune.epochs == 4


@pytest.mark.parametrize("argv,message", [
    (["--bits", "2"], "--bits needs --quantizer"),
    (["--quantizer", "fp16", "--bits", "8"], "16 bits"),
    (["--quantizer", "nf", "--bits", "1"], "out of range"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "3"], "use --base-epochs"),
    (["--base-lr", "0"], "--base-lr must be > 0"),
    (["--test-fraction", "1.5"], "--test-fraction"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_bad_stage_and_regime():
    with pytest.raises(ValueError, match="unknown or no module groups"):
        Stage("x", ("decoder",), 1, 1e-3)
    with pytest.raises(ValueError, match="unknown stage regime"):
        stage_regime("three-stage", 3, 1e-3)


def test_missing_base_directory():
    with pytest.raises(ValueError, match="no such model directory"):
        train.main(TINY + ["--quantizer", "learned", "--bits", "2", "--base", "/no/such/base"])


def test_dataset_options_are_parsed():
    args = train.parse_args(["--dataset", "shapes-vqa", "--dataset-option", "num_images=10",
                             "--dataset-option", "max_objects=2"])
    assert args.dataset_options == {"num_images": 10, "max_objects": 2}
    assert train.base_spec(args).key() != train.base_spec(train.parse_args(["--dataset", "shapes-vqa"])).key()


def test_bad_dataset_option(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset-option", "num_images"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_the_base_model_logs_its_epochs_with_an_eta():
    from sltestbed.base_model import BaseSpec, train_centralized
    from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
    from sltestbed.trainer import TensorData

    ds = make_digits_vqa(image_size=8, questions_per_image=1).select(range(64))
    data = TensorData(ds, VQACollator(build_tokenizer([ds])))
    lines = []
    spec = BaseSpec("digits-vqa", "tiny", None, 0, 10, 3e-3, 32, 0.2)
    train_centralized(spec, data, data, int(data.labels.max()) + 1, progress=False, log_fn=lines.append)
    assert [line.split(",")[0] for line in lines] == ["base model: epoch 5/10", "base model: epoch 10/10"]
    assert "s left" in lines[0] and "s left" not in lines[1]
