"""The Flower ClientApp: a SuperNode's side of split learning.

Each handler restores this node's `ClientRole` (client part, optimizer, batch cursor, the
forward awaiting its gradient) from `context.state`, applies whatever the message carries
(a pending gradient first, then weights), does its action and saves the role back. A
per-process cache keyed by node and state version skips the restore when the same actor
serves the node again; `context.state` stays the source of truth.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sltestbed import calibration
from sltestbed.experiment import ExperimentConfig, client_data, model_config, quantizer_overrides, splits
from sltestbed.model import ClientPart, TinyLlava
from sltestbed.model.tinyllava import MODALITIES
from sltestbed.roles import ClientRole, OptimConfig, dequantized
from sltestbed.trainer import Stage, train_stage
from strategies import protocol as P
from strategies.fedavg import model_weights

app = ClientApp()
_CACHE: dict = {}  # (run id, node id) -> (state version, role, data): a speed-up only


def _node(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc}: start the SuperNode with "
                         f"--node-config 'partition-id=<i> num-partitions=<n>'") from None


def _config(context: Context, meta=None) -> ExperimentConfig:
    """The run config; with bits="auto", resolved by the widths the server sends once chosen."""
    cfg = ExperimentConfig.from_run_config(dict(context.run_config))
    if cfg.auto_bits and meta is not None and "image_bits" in meta:
        cfg = cfg.resolved({m: int(meta[f"{m}_bits"]) for m in MODALITIES})
    return cfg


def _model(cfg: ExperimentConfig, meta) -> TinyLlava:
    base = str(meta.get("base", ""))
    if base:
        return TinyLlava.from_pretrained(base, **quantizer_overrides(cfg))
    torch.manual_seed(cfg.seed)  # no base: every party starts from the same seeded weights
    return TinyLlava(model_config(cfg, len(splits(cfg)[2])))


def _role(msg: Message, context: Context):
    """This node's role: the cached object when it holds the latest state, the cached object
    reloaded from `context.state` when another actor served the node since, a new one otherwise."""
    cfg = _config(context, msg.content["meta"])
    pid, nparts = _node(context)
    key = (msg.metadata.run_id, msg.metadata.dst_node_id)
    version = int(context.state["sl"]["version"]) if "sl" in context.state else 0
    cached = _CACHE.get(key)
    if cached is None:
        meta = msg.content["meta"]
        train, test = client_data(cfg, pid, nparts)
        role = ClientRole(_model(cfg, meta), cfg.cut_layers, train, batch_size=int(meta["batch_size"]),
                          seed=cfg.seed + pid, optim=OptimConfig(cfg.lr, int(meta["total_steps"])),
                          trainable=cfg.modules, distortion_weight=cfg.distortion_weight)
        cached = (0, role, test)
    held, role, test = cached
    if held != version:
        role.load_state_bytes(context.state["sl"]["role"])
    _CACHE[key] = (version, role, test)
    return cfg, role, test, version


def _save(msg: Message, context: Context, role: ClientRole, test, version: int) -> None:
    version += 1
    context.state["sl"] = ConfigRecord({"version": version, "role": role.state_bytes()})
    _CACHE[(msg.metadata.run_id, msg.metadata.dst_node_id)] = (version, role, test)


def _prepare(msg: Message, context: Context):
    """Role restored, the pending gradient applied (or the step dropped), weights loaded."""
    cfg, role, test, version = _role(msg, context)
    content = msg.content
    if "grads" in content:
        role.backward(dequantized(P.get_payloads(content, "grads")))
    elif role.pending is not None:
        role.pending = None  # the server dropped this client's last step: no update
    if "part" in content:
        role.load_part_state(P.get_state(content))
    return cfg, role, test, version


def _reply(msg: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=msg)


@app.query("info")
def info(msg: Message, context: Context) -> Message:
    cfg = _config(context)
    pid, nparts = _node(context)
    train, test = client_data(cfg, pid, nparts)
    content = RecordDict()
    P.put_meta(content, partition=pid, num_partitions=nparts, train_size=len(train), test_size=len(test))
    return _reply(msg, content)


@app.query("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    """bits="auto": the entropy report of this node's first training batches (summaries only)."""
    cfg = _config(context)
    meta = msg.content["meta"]
    pid, nparts = _node(context)
    train, _ = client_data(cfg, pid, nparts)
    probe = cfg.resolved({m: 8 for m in MODALITIES})  # the normalisation does not depend on the width
    part = ClientPart(_model(probe, meta), cfg.cut_layers)
    report = calibration.calibrate(part, train, int(meta["batch_size"]), int(meta["batches"]), cfg.seed + pid,
                                   float(meta["max_rel_mse"]))
    content = RecordDict()
    P.put_calibration(content, calibration.to_dict(report))
    return _reply(msg, content)


def _inject_fault(cfg: ExperimentConfig, context: Context, meta) -> None:
    """The `fault` run-config hook: fail or stall at one step, to test the server's handling."""
    spec = cfg.fault_spec
    if spec and (spec[1], spec[2], spec[3]) == (_node(context)[0], int(meta["round"]), int(meta["step"])):
        if spec[0] == "raise":
            raise RuntimeError(f"injected fault at partition {spec[1]}, round {spec[2]}, step {spec[3]}")
        time.sleep(cfg.step_timeout + 2)


@app.query("echo")
def echo(msg: Message, context: Context) -> Message:
    """A bare round trip: no model, a reply of the requested size (the benchmark's reference)."""
    content = RecordDict()
    content["echo"] = ConfigRecord({"echo": bytes(int(msg.content["meta"]["reply_bytes"]))})
    return _reply(msg, content)


@app.train("step")
def step(msg: Message, context: Context) -> Message:
    cfg, role, test, version = _prepare(msg, context)
    _inject_fault(cfg, context, msg.content["meta"])
    out = role.forward()
    content = RecordDict()
    P.put_payloads(content, "acts", out["payloads"], entropy=cfg.entropy_coding)
    P.put_batch(content, out["lengths"], out["labels"] if cfg.labels == "server" else None)
    _save(msg, context, role, test, version)
    return _reply(msg, content)


@app.train("logits")
def logits(msg: Message, context: Context) -> Message:
    cfg, role, test, version = _role(msg, context)
    loss, dlogits = role.loss_and_logit_grad(P.get_logits(msg.content))
    content = RecordDict()
    content["loss"] = ConfigRecord({"loss": loss, "dlogits": P.encode_tensor(dlogits)})
    _save(msg, context, role, test, version)
    return _reply(msg, content)


@app.query("part")
def part(msg: Message, context: Context) -> Message:
    cfg, role, test, version = _prepare(msg, context)
    content = RecordDict()
    P.put_state(content, role.part_state())
    _save(msg, context, role, test, version)
    return _reply(msg, content)


@app.evaluate("forward")
def evaluate_forward(msg: Message, context: Context) -> Message:
    cfg, role, test, version = _prepare(msg, context)
    out = role.evaluate_forward(test)
    content = RecordDict()
    P.put_payloads(content, "acts", out["payloads"], entropy=cfg.entropy_coding)
    at_server = cfg.labels == "server"
    P.put_batch(content, out["lengths"], out["labels"] if at_server else None, out["qtype_index"] if at_server else None)
    _save(msg, context, role, test, version)
    return _reply(msg, content)


@app.evaluate("score")
def evaluate_score(msg: Message, context: Context) -> Message:
    _, _, test, _ = _role(msg, context)
    logits = P.get_logits(msg.content)
    return _reply(msg, _score(logits.argmax(-1) == test.labels, test))


def _score(hit: torch.Tensor, test) -> RecordDict:
    """Correct and seen counts per question type of this node's test shard."""
    counts = torch.zeros(len(test.qtypes)).index_add_(0, test.qtype_index, hit.float())
    seen = torch.zeros(len(test.qtypes)).index_add_(0, test.qtype_index, torch.ones_like(hit, dtype=torch.float))
    content = RecordDict()
    content["score"] = MetricRecord({**{f"correct.{q}": float(c) for q, c in zip(test.qtypes, counts)},
                                     **{f"seen.{q}": float(n) for q, n in zip(test.qtypes, seen)}})
    return content


@app.train("local")
def local(msg: Message, context: Context) -> Message:
    """FedAvg baseline: the whole model, trained here on the local partition."""
    cfg, model, train, _, meta = _local_model(msg, context)
    stage = Stage("local", cfg.modules, cfg.local_epochs, cfg.lr)
    losses = train_stage(model, model, train, stage, int(meta["batch_size"]), cfg.seed + int(meta["round"]),
                         progress=False)
    content = RecordDict()
    P.put_state(content, model_weights(model))
    P.put_meta(content, num_examples=len(train), loss=float(losses[-1]))
    return _reply(msg, content)


@app.evaluate("local")
def evaluate_local(msg: Message, context: Context) -> Message:
    """FedAvg baseline: the global model on this node's test shard."""
    _, model, _, test, _ = _local_model(msg, context)
    model.eval()
    with torch.no_grad():
        batch = test.batch(torch.arange(len(test)))
        hit = model(batch["pixel_values"], batch["input_ids"], batch["lengths"]).argmax(-1) == batch["labels"]
    return _reply(msg, _score(hit, test))


def _local_model(msg: Message, context: Context):
    cfg = _config(context)
    pid, nparts = _node(context)
    meta = msg.content["meta"]
    train, test = client_data(cfg, pid, nparts)
    model = _model(cfg, meta)
    model.load_weights(P.get_state(msg.content))
    return cfg, model, train, test, meta
