"""The attacks in a run: what the server keeps, what is written, and running them again."""

import json

import numpy as np
import pytest
import torch

from app.in_process import run_in_process
from app.results import write_results
from sltestbed.experiment import ExperimentConfig
from sltestbed.privacy import __main__ as rerun
from sltestbed.privacy import after_training

CONFIG = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.85, "public-fraction": 0.05, "attack": "inversion",
          "attack-steps": 60, "public-size": 60, "attack-samples": 100}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    report, _ = run_in_process({**CONFIG, "strategy": "sequential", "labels": "client"})
    directory = tmp_path_factory.mktemp("run") / "run"
    write_results(str(directory), report, 1.0)
    return report, directory


def test_the_server_keeps_a_bounded_sample_of_whole_training_batches(attacked):
    report, _ = attacked
    observation = report.observation
    batch = 64  # sequential: the clients' batch is the run's
    assert len(observation.batches) == CONFIG["attack-samples"] // batch  # whole batches, no more than the bound
    assert len(observation) <= CONFIG["attack-samples"] and all(len(b) <= batch for b in observation.batches)
    stored = sum(p.fields[0].data.numel() * p.fields[0].data.element_size()
                 for b in observation.batches for p in b.payloads.values())
    per_sample = max(sum(p.numel for p in b.payloads.values()) / len(b) for b in observation.batches)
    assert stored <= CONFIG["attack-samples"] * per_sample  # one byte a 2-bit code, unpacked
    # each kept batch is named by its rows of the clients' data, checked against its question lengths
    truth = after_training.client_truth(report.cfg, report.clients)
    for b in observation.batches:
        assert torch.equal(truth.lengths[b.indices], b.lengths)
        assert b.logits is not None and b.logit_grads is not None  # labels at the client: what came back


def test_the_run_writes_its_attacks(attacked):
    report, directory = attacked
    privacy = json.loads((directory / after_training.PRIVACY_FILE).read_text())
    summary = json.loads((directory / "summary.json").read_text())
    # sequential sends the client part through the server (its quantizer with it)
    assert set(privacy["levels"]) == {"public-base", "trained-quantizer", "white-box"}
    for level in privacy["levels"].values():
        assert set(level["attacks"]) == {"nearest-code", "knn-mean", "code-classifier", "learned-inversion",
                                         "mlp-decoder", "conv-decoder", "nearest-token", "learned-token", "labels"}
        image = {k: v for k, v in level["attacks"].items() if "attack_accuracy" in v}
        assert level["best"]["attack_accuracy"]["value"] == max(v["attack_accuracy"] for v in image.values())
        assert level["attacks"]["labels"]["accuracy"] == 1.0  # d loss / d logits give every label away
        assert level["attacks"]["learned-inversion"]["samples"] == len(report.observation)
    assert summary["privacy"]["public-base"]["labels"] == {"accuracy": 1.0}
    machine = json.loads((directory / "config.json").read_text())["machine"]
    assert machine["logical_cpus"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
    assert summary["privacy"]["public-base"]["best"] == privacy["levels"]["public-base"]["best"]
    images = np.load(directory / after_training.RECONSTRUCTIONS_FILE)
    assert images["public-base/truth"].shape == images["public-base/learned-inversion"].shape == (8, 3, 8, 8)
    assert images["public-base/truth"].dtype == np.uint8


def test_a_learned_quantizer_is_attacked_with_the_clients_trained_encoders_too():
    """Parallel split learning never sends a client part: the trained quantizer is read from the
    first client after training, outside the protocol, and no byte of it is in the ledger."""
    report, _ = run_in_process({**CONFIG, "strategy": "parallel", "attack-steps": 20})
    assert list(report.privacy["levels"]) == ["public-base", "trained-quantizer"]
    assert report.client_state is None and sorted(report.trained_quantizer) == [
        "encoders.image.proj.bias", "encoders.image.proj.weight", "encoders.text.proj.bias",
        "encoders.text.proj.weight"]
    assert not [r for r in report.ledger.rows if r.kind == "model"]
    uniform, _ = run_in_process({**CONFIG, "strategy": "parallel", "attack-steps": 20, "quantizer": "uniform"})
    assert list(uniform.privacy["levels"]) == ["public-base"]  # nothing of a uniform quantizer trains


def test_the_attacks_run_again_from_the_run_directory_with_the_same_numbers(attacked, tmp_path):
    _, directory = attacked
    assert rerun.main([str(directory), "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / after_training.PRIVACY_FILE).read_text())
    first = json.loads((directory / after_training.PRIVACY_FILE).read_text())

    def numbers(report):  # everything but timings
        return {level: {a: {k: v for k, v in r.items() if k != "seconds"} for a, r in rep["attacks"].items()}
                for level, rep in report["levels"].items()}

    assert numbers(again) == numbers(first)


def test_a_run_directory_without_what_the_server_kept_is_named(tmp_path, capsys):
    assert rerun.main([str(tmp_path)]) == 2
    assert "observation.pt" in capsys.readouterr().err


def test_attack_settings_are_checked():
    with pytest.raises(ValueError, match="'attack'"):
        ExperimentConfig.from_run_config({"attack": "everything"})
    with pytest.raises(ValueError, match="no cut"):
        ExperimentConfig.from_run_config({"attack": "inversion", "strategy": "fedavg"})
    with pytest.raises(ValueError, match="'public-size'"):
        ExperimentConfig.from_run_config({"attack": "inversion", "public-size": 0})


def test_local_loss_is_attacked_on_its_rounds_client_batches():
    """Local-loss sends a round's activations in one message: the server keeps client batches of
    it (values sliced from the round's payload), named by their rows, and attacks them."""
    report, _ = run_in_process({**CONFIG, "strategy": "local-loss"})
    observation = report.observation
    batch = 32  # parallel's client batch: ceil(64 / 2)
    assert len(observation.batches) == CONFIG["attack-samples"] // batch
    truth = after_training.client_truth(report.cfg, report.clients)
    for b in observation.batches:
        assert len(b) <= batch and torch.equal(truth.lengths[b.indices], b.lengths)
        assert torch.equal(truth.labels[b.indices], b.labels)  # labels at the server: they came up with them
        image, text = b.payloads["image"], b.payloads["text"]  # payloads, so the ceiling counts their codes
        assert image.shape[0] == text.shape[0] == len(b) and text.shape[1] == int(b.lengths.max())
    levels = report.privacy["levels"]
    assert {"public-base", "trained-quantizer"} <= set(levels) and "white-box" not in levels  # no part ever sent
    assert levels["public-base"]["attacks"]["learned-inversion"]["samples"] == len(observation)


@pytest.mark.parametrize("scheme, bits", [("learned", 2), ("fp32", 32), ("uniform", 2)])
def test_rows_of_a_payload_are_the_rows_of_its_values(scheme, bits):
    from sltestbed.quantizers import Payload, build_quantizer, dequantize
    from strategies.observer import rows_of

    x = torch.randn(10, 6, 16, generator=torch.Generator().manual_seed(0))
    payload = build_quantizer(scheme, bits, dim=16)[0].encode(x)
    part = rows_of(payload, slice(3, 7), tokens=4)
    expected = dequantize(payload)[3:7, :4]
    got = dequantize(part) if isinstance(part, Payload) else part
    assert torch.equal(got, expected)
    assert isinstance(part, Payload) == (scheme != "uniform")  # uniform's scales are the whole payload's
