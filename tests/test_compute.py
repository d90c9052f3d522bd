"""Device and precision: what a role computes on is its own business; what crosses the link,
and every byte counted, is the same."""

import math

import pytest
import torch

from app.in_process import run_in_process
from sltestbed.compute import Compute, check_device, resolve_device
from sltestbed.experiment import ExperimentConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RUN = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.85, "public-fraction": 0.05}


def totals(report) -> dict:
    return report.ledger.totals()


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_names(name):
    check_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "CPU", "cuda:x", ""])
def test_bad_device_names_are_named(name):
    with pytest.raises(ValueError, match=f"run config 'device' = {name!r} is not a device"):
        ExperimentConfig.from_run_config({"device": name})


def test_auto_is_the_cpu_without_cuda_and_a_missing_gpu_is_named():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this machine has no CUDA device"):
            Compute.of("cuda")
    with pytest.raises(ValueError, match="'precision' = 'fp8' is not allowed"):
        ExperimentConfig.from_run_config({"precision": "fp8"})


def test_bf16_trains_and_sends_the_same_bytes_as_fp32():
    """bf16 autocast changes the numbers, not what crosses: the codes are computed in fp32
    from the features, so every payload has the same shape and width and the ledger the same
    bytes (fixed-width codes)."""
    fp32, _ = run_in_process({**RUN, "device": "cpu"})
    bf16, _ = run_in_process({**RUN, "device": "cpu", "precision": "bf16"})
    assert math.isfinite(bf16.rounds[-1].accuracy) and math.isfinite(bf16.rounds[-1].loss)
    assert totals(bf16) == totals(fp32)
    assert bf16.rounds[-1].loss != fp32.rounds[-1].loss  # it did compute in bf16


def test_payloads_leave_a_role_on_the_cpu_and_the_codes_are_fp32():
    from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
    from sltestbed.model import TinyLlava, preset
    from sltestbed.roles import ClientRole
    from sltestbed.trainer import OptimConfig, TensorData

    ds = make_digits_vqa(image_size=8).select(range(64))
    data = TensorData(ds, VQACollator(build_tokenizer([ds])))
    torch.manual_seed(0)
    model = TinyLlava(preset("tiny", vocab_size=64, quantizer="learned", bits=2))
    role = ClientRole(model, 0, data, batch_size=16, seed=0, optim=OptimConfig(1e-3, 4),
                      compute=Compute.of("cpu", "bf16"))
    acts, _ = role.forward()
    assert all(f.data.device.type == "cpu" for p in acts.payloads.values() for f in p.fields)
    assert all(o.values.dtype == torch.float32 for o in role.pending[1].values())


@CUDA
def test_cuda_sends_the_same_bytes_as_the_cpu():
    cpu, _ = run_in_process({**RUN, "device": "cpu"})
    gpu, _ = run_in_process({**RUN, "device": "cuda"})
    assert totals(gpu) == totals(cpu)
    assert abs(gpu.rounds[-1].accuracy - cpu.rounds[-1].accuracy) < 0.05


@CUDA
def test_a_node_state_saved_on_cuda_restores_on_the_cpu():
    from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
    from sltestbed.model import TinyLlava, preset
    from sltestbed.roles import ClientRole
    from sltestbed.trainer import OptimConfig, TensorData

    ds = make_digits_vqa(image_size=8).select(range(64))
    data = TensorData(ds, VQACollator(build_tokenizer([ds])))

    def role(device):
        torch.manual_seed(0)
        return ClientRole(TinyLlava(preset("tiny", vocab_size=64, quantizer="learned", bits=2)), 0, data, batch_size=16,
                          seed=0, optim=OptimConfig(1e-3, 4), compute=Compute.of(device))

    gpu = role("cuda")
    gpu.forward()
    cpu = role("cpu")
    cpu.load_state_bytes(gpu.state_bytes())
    assert cpu.pending is not None and cpu.steps == gpu.steps


def test_the_launchers_forward_a_gpu_share_to_flower():
    from harness.superlink import client_resources

    assert client_resources(1) == {"client-resources-num-cpus": 1}
    assert client_resources(2.0, 0.5) == {"client-resources-num-cpus": 2, "client-resources-num-gpus": 0.5}
    with pytest.raises(ValueError, match="gpus >= 0"):
        client_resources(1, -1)


def test_the_step_benchmark_times_split_against_unsplit(capsys):
    from sltestbed import step_bench

    assert step_bench.main(["--presets", "tiny", "--repeats", "1", "--device", "cpu", "--precision", "bf16"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:4] == ["tiny", "cpu", "bf16", "16"]
    unsplit, split, ratio = map(float, row[4:])
    assert ratio == pytest.approx(split / unsplit, rel=0.01, abs=0.01)
