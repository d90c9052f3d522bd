"""The in-process transport: the ServerApp's strategies against the ClientApp's own handler,
called directly, in one process, with no SuperLink, no Ray and no polling.

Messages are the same Flower `Message`s of the same records as over the Grid, so the codec
runs, the ledger counts the same bytes, and each node keeps its state in a `Context` as a
SuperNode does. What differs: delivery is a function call, and a node that stalls (the
`stall` fault) answers late without anyone waiting: its reply is held back from the exchange
(counted as no reply) and arrives before the node's next message; a node whose worker dies
(the `kill` fault) gets an error reply, as Flower sends, and every node's cached role is lost,
as a dead actor's are.

    report = run_in_process({"preset": "tiny", "strategy": "sequential"}, num_supernodes=2)

The strategies' unit tests use it; a run takes seconds where `flwr run` takes a minute.
"""

from __future__ import annotations

import random
import time
import uuid

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from sltestbed.experiment import ExperimentConfig
from strategies import run_strategy

from . import client_app
from .grid_transport import MessageTransport

class WorkerKilled(Exception):
    """The `kill` fault in this process: the worker "dies" by raising this."""


def _kill() -> None:
    raise WorkerKilled("the ClientApp worker process was killed (the kill fault, in process)")


class InProcessTransport(MessageTransport):
    """`num_supernodes` nodes with partitions 0..n-1 under random node ids. For tests:
    `restore_every` drops the ClientApp's per-process cache before every message, so each
    node's role is rebuilt from its saved state as when another actor serves it;
    `keep_messages` keeps every (request, reply) pair in `kept`."""

    def __init__(self, run_config: dict, num_supernodes: int = 2, seed: int = 0, restore_every: bool = False,
                 keep_messages: bool = False):
        super().__init__(ExperimentConfig.from_run_config(run_config))
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        # unique per transport (it keys the ClientApp's cache), and always 63 bits long, so every
        # run's messages encode to the same number of bytes
        self.run_id = (1 << 62) | (uuid.uuid4().int >> 66)
        rng = random.Random(seed)  # node ids at random, as a SuperLink draws them
        self.contexts = {}
        while len(self.contexts) < num_supernodes:
            node = rng.getrandbits(63) + 2
            self.contexts.setdefault(node, Context(self.run_id, node, {"partition-id": len(self.contexts),
                                                                       "num-partitions": num_supernodes},
                                                   RecordDict(), dict(run_config)))
        self.restore_every = restore_every
        self.kept: list[tuple[Message, Message]] | None = [] if keep_messages else None
        self.late: dict[int, Message] = {}  # node -> a reply that came after its exchange ended

    def node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def _message(self, content, node: int, mtype: str) -> Message:
        return Message(content=content, metadata=Metadata(
            run_id=self.run_id, message_id=uuid.uuid4().hex, src_node_id=SUPERLINK_NODE_ID, dst_node_id=node,
            reply_to_message_id="", group_id="", created_at=time.time(), ttl=43200.0, message_type=mtype))

    def _deliver(self, messages, timeout):
        replies, missing = [], {}
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.restore_every:
                client_app._CACHE.pop((self.run_id, node), None)
            stalled = []
            try:
                reply = client_app.handle(msg, self.contexts[node], wait=stalled.append, kill=_kill)
            except WorkerKilled as exc:  # a dead worker's memory is gone: every node's cached role
                self.stop()
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            except Exception as exc:  # what Flower turns into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            if self.kept is not None:
                self.kept.append((msg, reply))
            if stalled:
                self.late[node] = reply
                missing[node] = msg.metadata.message_id
            else:
                replies.append(reply)
        return replies, missing

    def is_free(self, node: int) -> bool:
        """A late reply is in by the time the node is asked again."""
        if node in self.outstanding:
            del self.outstanding[node]
            self.late.pop(node, None)
        return True

    def stop(self) -> None:
        """Forget the nodes' cached roles."""
        for node in self.contexts:
            client_app._CACHE.pop((self.run_id, node), None)


def run_in_process(run_config: dict, num_supernodes: int = 2, log=lambda message: None, scalars=None,
                   directory: str | None = None, **transport_options):
    """The whole server side of one experiment in this process: set-up, the strategy's run.
    Returns (RunReport, transport). `run_config`: run-config keys as in `flwr run`;
    `scalars`: a TensorBoard-style writer for the per-step and per-round figures;
    `directory`: where checkpoints go and a resumed run finds its own (None: no checkpoints)."""
    config = ExperimentConfig.from_run_config(run_config)
    transport = InProcessTransport(run_config, num_supernodes, **transport_options)
    try:
        return run_strategy(config, transport, log, scalars, directory), transport
    finally:
        transport.stop()
