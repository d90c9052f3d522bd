"""The communication model (`sltestbed.comm_model`) against the byte ledger of real runs, and
its checks.

Each run: in process, 2 clients, one round, 36 training questions per client in batches of 16
(a partial last batch; parallel: client batches of 8), learned 2-bit activations, fp32
gradients, no base model. Each client's held-out shard is cut to 8 questions: evaluation
traffic is not what the model predicts, and a full shard would take most of the time.

What the model predicts is the round's training traffic as the ledger counts it: every
activation, gradient, label and model row, except the evaluation's own data (activations and
labels of evaluate.* messages) and FedAvg's evaluation broadcast of the averaged model
(model rows of evaluate.local: the next round's training message sends it again). Gradients
and averaged or handed-over client parts count wherever they ride, evaluation messages
included. Config rows (the step's meta and batch lengths) are not modelled.

Questions are 4 to 6 tokens and a batch is trimmed to its longest: the workload takes the
longest (`input_ids` of the collated partition are padded to it), so the prediction is exact
when every batch holds a longest question, as every batch of these seeded runs does.
"""

import copy
import math

import pytest

from app.in_process import run_in_process
from sltestbed import codec, comm_model
from sltestbed.client_node import ClientNode
from sltestbed.comm_model import Round, Workload
from sltestbed.experiment import ExperimentConfig
from sltestbed.averaging import model_weights
from sltestbed.base_model import build_model
from sltestbed.model.profile import cut_workload
from sltestbed.splits import client_data, vocab_size

RUN = {"base": "none", "num-rounds": 1, "test-fraction": 0.98, "public-fraction": 0.01, "batch-size": 16}
TEST_QUESTIONS = 8
FRAMING_MAX = 32  # protobuf framing of one record entry, beyond the codec's header (measured: about 18)


def _small_test_shard(node):
    full = client_data(node.cfg, node.partition, node.num_partitions)[1]
    small = copy.copy(full)
    for name in ("pixel_values", "input_ids", "lengths", "labels", "qtype_index"):
        setattr(small, name, getattr(full, name)[:TEST_QUESTIONS])
    return small


def _training_rows(rows):
    def evaluation(r):
        return ((r.kind in ("activations", "labels") and r.message_type.startswith("evaluate"))
                or (r.kind == "model" and r.message_type == "evaluate.local"))
    return [r for r in rows if r.kind != "config" and not evaluation(r)]


def _workload(preset):
    cfg = ExperimentConfig.from_run_config({**RUN, "preset": preset})
    model = build_model(cfg, None, vocab_size(cfg))
    data = client_data(cfg, 0, 2)[0]
    workload = cut_workload(model, data.pixel_values[:1], data.input_ids[:1], cfg.cut, cfg.modules)
    assert workload.fedavg_params == sum(v.numel() for v in model_weights(model, cfg.modules).values())
    assert workload.fedavg_params < sum(v.numel() for v in model_weights(model).values())  # the tower is frozen
    return cfg, workload, [len(client_data(cfg, k, 2)[0]) for k in range(2)]


@pytest.fixture(scope="module")
def runs():
    patch = pytest.MonkeyPatch()
    patch.setattr(ClientNode, "test", property(_small_test_shard))
    try:
        out = {}
        for preset, strategies in (("tiny", comm_model.STRATEGIES), ("wide", ("parallel",))):
            cfg, workload, sizes = _workload(preset)
            for strategy in strategies:
                report, _ = run_in_process({**RUN, "preset": preset, "strategy": strategy})
                out[preset, strategy] = cfg, workload, sizes, report
        return out
    finally:
        patch.undo()


CASES = [("tiny", s) for s in comm_model.STRATEGIES] + [("wide", "parallel")]  # wide: one run, its data are slow to build


@pytest.mark.parametrize("preset,strategy", CASES)
def test_the_model_predicts_the_ledgers_ideal_bytes_exactly(runs, preset, strategy):
    cfg, workload, sizes, report = runs[preset, strategy]
    assert sizes[0] == sizes[1]  # equal partitions: one samples-per-client figure
    rnd = Round(samples_per_client=sizes[0], clients=2, batch_size=cfg.batch_size, activation_bits=2)
    predicted = comm_model.round_bytes(strategy, workload, rnd)
    measured = {}
    for r in _training_rows(report.ledger.rows):
        measured[r.direction, r.kind] = measured.get((r.direction, r.kind), 0) + r.ideal_bytes
    assert {k: v for k, v in predicted.items() if v} == measured


@pytest.mark.parametrize("preset,strategy", [c for c in CASES if c[1] != "fedavg"])
def test_serialized_activations_and_gradients_are_the_ideal_bytes_plus_headers(runs, preset, strategy):
    cfg, workload, sizes, report = runs[preset, strategy]
    rnd = Round(samples_per_client=sizes[0], clients=2, batch_size=cfg.batch_size, activation_bits=2)
    ideal = comm_model.round_bytes(strategy, workload, rnd)
    headers = comm_model.payload_overheads(strategy, workload, rnd)
    rows = _training_rows(report.ledger.rows)
    for key in (("up", "activations"), ("down", "gradients")):
        serialized = sum(r.serialized_bytes for r in rows if (r.direction, r.kind) == key)
        payloads = headers[key] // comm_model.CODEC_HEADER_BYTES
        assert payloads == sum(1 for r in rows if (r.direction, r.kind) == key)
        assert ideal[key] + headers[key] <= serialized <= ideal[key] + headers[key] + FRAMING_MAX * payloads, key


def test_the_header_constant_is_the_codecs():
    assert comm_model.CODEC_HEADER_BYTES == codec.header_size(3, 0, 1)


WORKLOAD = Workload(client_params=1_000, fedavg_params=1_000_000, cut_elements={"image": 700, "text": 100})


def test_each_payload_is_rounded_up_to_whole_bytes():
    w = Workload(10, 100, {"image": 3})  # 3 elements x 1 bit: 1 byte a sample, not 3/8
    rnd = Round(samples_per_client=5, clients=1, batch_size=1, activation_bits=1, label_bits=1)
    assert comm_model.round_bytes("sequential", w, rnd)[("up", "activations")] == 5
    assert comm_model.round_bytes("sequential", w, rnd)[("up", "labels")] == 5
    assert comm_model.round_bytes("parallel", w, Round(5, 1, batch_size=5, activation_bits=1))[("up", "activations")] == 2


def test_fedavg_moves_the_whole_model_both_ways_and_splitfed_the_client_parts():
    rnd = Round(samples_per_client=100, clients=4)
    fedavg = comm_model.round_bytes("fedavg", WORKLOAD, rnd)
    assert fedavg[("up", "model")] == fedavg[("down", "model")] == 4 * 4_000_000
    for strategy in ("sequential", "splitfed-v1", "splitfed-v2"):
        assert comm_model.round_bytes(strategy, WORKLOAD, rnd)[("down", "model")] == 4 * 4_000
    assert comm_model.round_bytes("parallel", WORKLOAD, rnd)[("down", "model")] == 0


@pytest.mark.parametrize("strategy", comm_model.SPLIT_STRATEGIES)
def test_at_the_crossover_split_and_fedavg_send_the_same_bytes(strategy):
    n = comm_model.crossover_samples(strategy, WORKLOAD, clients=4, activation_bits=3)
    split = (4 * n * comm_model.bytes_per_sample(WORKLOAD, 3, strategy=strategy)
             + comm_model.weight_bytes_per_round(strategy, WORKLOAD, 4))
    assert math.isclose(split, comm_model.weight_bytes_per_round("fedavg", WORKLOAD, 4), rel_tol=1e-12)
    # and the exact count agrees with the continuous form up to the payloads' last bytes
    rnd = Round(samples_per_client=round(n), clients=4, batch_size=round(n) * 4, activation_bits=3)
    assert abs(comm_model.total_bytes(strategy, WORKLOAD, rnd) - comm_model.total_bytes("fedavg", WORKLOAD, rnd)) \
        <= 4 * (comm_model.bytes_per_sample(WORKLOAD, 3, strategy=strategy) + 8)


def test_local_loss_sends_the_rounds_activations_and_labels_up_and_nothing_down():
    rnd = Round(samples_per_client=100, clients=4, batch_size=64, activation_bits=2)
    local, parallel = (comm_model.round_bytes(s, WORKLOAD, rnd) for s in ("local-loss", "parallel"))
    assert local[("up", "activations")] == 4 * (700 * 100 * 2 // 8 + 100 * 100 * 2 // 8)  # one payload each
    assert local[("up", "labels")] == parallel[("up", "labels")]
    assert local[("down", "gradients")] == local[("down", "model")] == local[("up", "model")] == 0
    assert comm_model.payload_overheads("local-loss", WORKLOAD, rnd) == {
        ("up", "activations"): 4 * 2 * comm_model.CODEC_HEADER_BYTES, ("down", "gradients"): 0}


def test_crossover_model_size_is_where_fedavg_catches_up():
    rnd = Round(samples_per_client=500, clients=10, activation_bits=2)
    size = comm_model.crossover_model_size("parallel", WORKLOAD, rnd)
    at = WORKLOAD.with_server_params(size - WORKLOAD.client_params)
    split = 10 * 500 * comm_model.bytes_per_sample(at, 2)
    assert math.isclose(split, comm_model.weight_bytes_per_round("fedavg", at, 10), rel_tol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda: comm_model.round_bytes("gossip", WORKLOAD, Round(1, 1)), "unknown strategy 'gossip'"),
    (lambda: Round(10, 2, activation_bits=0), "activation_bits must be an integer in 1..32"),
    (lambda: Round(10, 2, gradient_bits=33), "gradient_bits must be an integer in 1..32"),
    (lambda: Round(0, 2), "samples_per_client must be an integer >= 1"),
    (lambda: Workload(1, 10, {}), "cut_elements is empty"),
    (lambda: Workload(-1, 10, {"image": 1}), "client_params must be an integer >= 0"),
    (lambda: comm_model.crossover_samples("fedavg", WORKLOAD, 2, 2), "compares a split strategy with FedAvg"),
])
def test_bad_input_is_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
