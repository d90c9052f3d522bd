"""What each strategy computes, checked against a reference built by hand from the roles and
FedAvg: 2 clients, fp32 activations, one round, in process. An identical SplitFed v1 and v2,
a parallel strategy that did not join its clients, or a hand-over in the wrong order would
each fail here."""

import copy
import math

import pytest
import torch

from sltestbed import wire
from sltestbed.base_model import build_model
from sltestbed.experiment import ExperimentConfig
from sltestbed.averaging import fedavg, model_weights
from sltestbed.label_protocol import LABELS, label_protocol
from sltestbed.model import ClientPart, ServerPart
from sltestbed.quantizers import dequantize
from sltestbed.roles import ClientRole, ServerRole
from sltestbed.splits import client_data, vocab_size
from sltestbed.trainer import OptimConfig, Stage, train_stage
from strategies.local import run_locally

CONFIG = {"preset": "tiny", "base": "none", "num-rounds": 1, "test-fraction": 0.9, "public-fraction": 0.05, "quantizer": "fp32",
          "save-model": True}


def setup(strategy, **overrides):
    cfg = ExperimentConfig.from_run_config({**CONFIG, "strategy": strategy, **overrides})
    data = [client_data(cfg, k, 2)[0] for k in range(2)]
    return cfg, data, (lambda: build_model(cfg, None, vocab_size(cfg)))


def client(cfg, model, data, *, k, batch, total_steps):
    return ClientRole(model, cfg.cut_layers, data, batch_size=batch, seed=cfg.seed + k,
                      optim=OptimConfig(cfg.lr, total_steps), trainable=cfg.modules,
                      distortion_weight=cfg.distortion_weight)


def server(cfg, model, total_steps):
    return ServerRole(model, cfg.cut_layers, optim=OptimConfig(cfg.lr, total_steps), trainable=cfg.modules,
                      grad_scheme=cfg.grad_quantizer, grad_bits=cfg.gradient_bits, seed=cfg.seed)


def step(server_role, clients, pending):
    """One split step: each client applies its pending gradient, then all forward through
    `server_role` as one batch; the new gradients wait in `pending`."""
    for k, c in enumerate(clients):
        if k in pending:
            c.backward(pending.pop(k))
    outs = [c.forward() for c in clients]
    server_role.forward([acts for acts, _ in outs])
    _, grads = server_role.backward_from_labels([labels for _, labels in outs])
    for k, g in zip(range(len(clients)), grads):
        pending[k] = g


def flush(clients, pending, ids=None):
    for k, c in enumerate(clients):
        if k in pending and (ids is None or k in ids):
            c.backward(pending.pop(k))


def assert_same(a, b, tol=1e-6):
    a, b = dict(a.named_parameters()), dict(b.named_parameters())
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, worst


def test_parallel_joins_every_client_in_one_batch_per_step(monkeypatch):
    cfg, data, new_model = setup("parallel")
    batches = []
    forward = ServerRole.forward
    monkeypatch.setattr(ServerRole, "forward", lambda self, inputs: batches.append(len(inputs)) or forward(self, inputs))
    report, _ = run_locally({**CONFIG, "strategy": "parallel"})
    steps = math.ceil(len(data[0]) / math.ceil(cfg.batch_size / 2))
    assert batches == [2] * steps  # one server forward a step, both clients in it

    monkeypatch.setattr(ServerRole, "forward", forward)
    clients = [client(cfg, new_model(), data[k], k=k, batch=math.ceil(cfg.batch_size / 2), total_steps=steps) for k in range(2)]
    srv = server(cfg, new_model(), steps)
    pending = {}
    for _ in range(steps):
        step(srv, clients, pending)
    flush(clients, pending)  # the evaluation request carries the last gradients
    assert_same(ServerPart(report.model, cfg.cut_layers), srv.part)
    assert_same(ClientPart(report.model, cfg.cut_layers), clients[0].part)  # partition 0's own part


def test_sequential_hands_the_client_part_from_client_to_client():
    cfg, data, new_model = setup("sequential")
    report, _ = run_locally({**CONFIG, "strategy": "sequential"})
    steps = [math.ceil(len(d) / cfg.batch_size) for d in data]
    clients = [client(cfg, new_model(), data[k], k=k, batch=cfg.batch_size, total_steps=max(steps)) for k in range(2)]
    srv = server(cfg, new_model(), sum(steps))
    pending = {}
    for k in range(2):
        if k == 1:  # hand-over: client 0's part (its last gradient applied) goes to client 1
            flush(clients, pending, {0})
            clients[1].load_part_state(clients[0].part_state())
        for _ in range(steps[k]):
            one = {0: pending.pop(k)} if k in pending else {}
            step(srv, [clients[k]], one)
            pending[k] = one[0]
    flush(clients, pending)
    assert_same(ServerPart(report.model, cfg.cut_layers), srv.part)
    assert_same(ClientPart(report.model, cfg.cut_layers), clients[1].part)  # the latest part, handed to all


def test_splitfed_v1_averages_client_parts_and_server_copies():
    cfg, data, new_model = setup("splitfed-v1")
    report, _ = run_locally({**CONFIG, "strategy": "splitfed-v1"})
    steps = math.ceil(len(data[0]) / cfg.batch_size)
    clients = [client(cfg, new_model(), data[k], k=k, batch=cfg.batch_size, total_steps=steps) for k in range(2)]
    srv = server(cfg, new_model(), steps)
    copies = [copy.deepcopy(srv) for _ in range(2)]
    pending = {}
    for _ in range(steps):
        for k in range(2):  # each client through its own server copy
            one = {0: pending.pop(k)} if k in pending else {}
            step(copies[k], [clients[k]], one)
            pending[k] = one[0]
    flush(clients, pending)
    sizes = [len(d) for d in data]
    client_avg = fedavg([c.part_state() for c in clients], sizes)
    srv.load_part_state(fedavg([c.part_state() for c in copies], sizes))
    assert_same(ServerPart(report.model, cfg.cut_layers), srv.part)
    clients[0].load_part_state(client_avg)
    assert_same(ClientPart(report.model, cfg.cut_layers), clients[0].part)


def test_local_loss_trains_each_client_on_its_own_head_and_the_server_on_what_came_up():
    cfg, data, new_model = setup("local-loss")
    report, transport = run_locally({**CONFIG, "strategy": "local-loss"})
    b = math.ceil(cfg.batch_size / 2)
    steps = math.ceil(sum(len(d) for d in data) / 2 / b)
    clients = [ClientRole(new_model(), cfg.cut_layers, data[k], batch_size=b, seed=cfg.seed + k,
                          optim=OptimConfig(cfg.lr, steps), trainable=cfg.modules,
                          distortion_weight=cfg.distortion_weight, local_head=True, seed_head=cfg.seed)
               for k in range(2)]
    srv = server(cfg, new_model(), steps)
    uploads = [c.local_round(steps) for c in clients]  # each client alone, on its own head's loss
    for s in range(steps):  # then the server: step s joins each client's s-th batch of the upload
        values, lengths, labels = [], [], []
        for _, acts, y in uploads:
            rows = slice(s * b, (s + 1) * b)
            n = acts.lengths[rows]
            v = {m: dequantize(p)[rows] for m, p in acts.payloads.items()}
            values.append({"image": v["image"], "text": v["text"][:, : int(n.max())]})
            lengths.append(n)
            labels.append(y[rows])
        srv.train_on(values, lengths, labels)
    assert_same(ServerPart(report.model, cfg.cut_layers), srv.part)
    assert_same(ClientPart(report.model, cfg.cut_layers), clients[0].part)  # partition 0's own part
    # one training message per client in the round, and no gradient ever came down
    training = [(node, mtype) for rnd, _, node, mtype in transport.sent if rnd == 1 and mtype.startswith("train.")]
    assert sorted(m for _, m in training) == [wire.ROUND] * 2 and len({n for n, _ in training}) == 2
    # the local head is the client's: seeded alike on both, trained apart, in no model
    heads = [dict(c.local.named_parameters()) for c in clients]
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not any(k.startswith("local") for k in report.model.state_dict())


def splitfed_v2_order(seed):
    return torch.randperm(2, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_splitfed_v2_takes_clients_in_its_seeded_order_then_averages(seed):
    order = splitfed_v2_order(seed)
    cfg, data, new_model = setup("splitfed-v2", seed=seed)
    report, transport = run_locally({**CONFIG, "strategy": "splitfed-v2", "seed": seed})
    first_step = {p: min(i for i, (_, _, node, mtype) in enumerate(transport.sent)
                         if transport.partitions[node] == p and mtype == wire.STEP) for p in (0, 1)}
    assert sorted((0, 1), key=first_step.get) == order
    steps = [math.ceil(len(d) / cfg.batch_size) for d in data]
    clients = [client(cfg, new_model(), data[k], k=k, batch=cfg.batch_size, total_steps=max(steps)) for k in range(2)]
    srv = server(cfg, new_model(), sum(steps))
    pending = {}
    for k in order:  # one server part, clients in turn, each from the client part it holds
        for _ in range(steps[k]):
            one = {0: pending.pop(k)} if k in pending else {}
            step(srv, [clients[k]], one)
            pending[k] = one[0]
    flush(clients, pending)
    average = fedavg([c.part_state() for c in clients], [len(d) for d in data])
    assert_same(ServerPart(report.model, cfg.cut_layers), srv.part)
    clients[0].load_part_state(average)
    assert_same(ClientPart(report.model, cfg.cut_layers), clients[0].part)


def test_seeds_with_both_splitfed_v2_orders_are_tested():
    assert {tuple(splitfed_v2_order(s)) for s in (0, 1)} == {(0, 1), (1, 0)}


def test_fedavg_averages_locally_trained_whole_models():
    cfg, data, new_model = setup("fedavg")
    report, _ = run_locally({**CONFIG, "strategy": "fedavg"})
    global_model = new_model()
    states, sizes = [], []
    for k in range(2):
        local = new_model()
        local.load_weights(model_weights(global_model))
        train_stage(local, local, data[k], Stage("local", cfg.modules, cfg.local_epochs, cfg.lr), cfg.batch_size,
                    cfg.seed + 1, progress=False)
        states.append(model_weights(local))
        sizes.append(len(data[k]))
    global_model.load_weights(fedavg(states, sizes))
    assert_same(report.model, global_model)


@pytest.mark.parametrize("labels", LABELS)
def test_a_step_makes_the_round_trips_its_label_protocol_says_and_the_benchmark_counts_them(labels):
    report, transport = run_locally({**CONFIG, "strategy": "parallel", "labels": labels, "benchmark-roundtrips": 1,
                                     "save-model": False})
    training = [(step, mtype) for rnd, step, _, mtype in transport.sent if rnd == 1 and step >= 0
                and mtype in (wire.STEP, wire.LOGITS)]
    steps = {step for step, _ in training}
    assert len(set(training)) == label_protocol(labels).round_trips * len(steps)
    assert report.roundtrip["roundtrips_per_step"] == label_protocol(labels).round_trips


def test_these_tests_need_no_flower():
    """The strategies' semantics run without Flower (a fresh interpreter imports this file)."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); import test_strategy_semantics; "
            "assert not [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')], 'flwr imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__file__.rsplit("/tests/", 1)[0])
