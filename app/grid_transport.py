"""Transports over Flower messages: what both share (records, accounting, timeouts, replies
that never came), and the one over Flower's Grid that the ServerApp uses.

Every request becomes a Flower `Message` of `flower_records.write(content)`; its protobuf size and
its accountable parts go to the ledger before it leaves, a reply's when it arrives. A node's
first message, or one of the set-up kinds, may take far longer than a step (it loads data and
builds its model): it gets the set-up timeout. A node whose reply never came stays busy
until that reply is in.
"""

from __future__ import annotations

import time
from abc import abstractmethod

from flwr.app import Message
from flwr.common.serde import message_to_proto

from sltestbed import wire
from sltestbed.experiment import ExperimentConfig
from sltestbed.ledger import ByteLedger
from strategies.transport import Exchange, Transport

from . import flower_records

SETUP_TIMEOUT = 600.0  # seconds for a node's first messages (it loads data and builds its model)


def error_reason(text: str) -> str:
    """A failure's reason from an error reply: the worker's death said as such (Flower's
    reason is Ray's many-line `ActorDiedError`), else the last line of the client's error."""
    if "ActorDiedError" in text:
        start = text.find("Worker exit detail:")
        detail = text[start:].split(" Some common causes")[0].strip().rstrip("'>") if start >= 0 else ""
        return f"the ClientApp's worker process died (Ray ActorDiedError{': ' + detail[:300] if detail else ''})"
    lines = text.strip().splitlines()
    return f"client error: {lines[-1][-300:] if lines else '?'}"


class MessageTransport(Transport):
    """Requests as Flower messages, accounted; subclasses deliver them."""

    def __init__(self, cfg: ExperimentConfig):
        self.entropy = cfg.entropy_coding
        self.step_timeout = cfg.step_timeout
        self.ledger = ByteLedger()
        self.round_trips = 0
        self.partitions: dict[int, int] = {}
        self.messages_sent = 0  # numbers the messages in the ledger
        self.warm: set[int] = set()  # nodes that have built their role (answered a step)
        self.outstanding: dict[int, str] = {}  # node -> id of a message whose reply never came

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "messages_sent": self.messages_sent}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.messages_sent = state["messages_sent"]

    @abstractmethod
    def _message(self, content, node: int, mtype: str) -> Message:
        """A request addressed to `node`."""

    @abstractmethod
    def _deliver(self, messages: list[Message], timeout: float) -> tuple[list[Message], dict[int, str]]:
        """Send the messages, collect replies until all are in or `timeout` passes; return
        (replies, {node: id of the message still unanswered})."""

    def exchange(self, requests, round, step, account=True) -> Exchange:
        messages = []
        for node, (mtype, content) in requests.items():
            msg = self._message(flower_records.write(content, self.entropy), node, mtype)
            if account:
                self._account(msg, "down", round, step, node, mtype)
            messages.append(msg)
        cold = any(n not in self.warm for n in requests) or any(t in wire.SETUP for t, _ in requests.values())
        timeout = SETUP_TIMEOUT if cold else self.step_timeout
        replies, missing = self._deliver(messages, timeout)
        self.round_trips += 1
        out = Exchange()
        for reply in replies:
            src = reply.metadata.src_node_id
            mtype = requests[src][0]
            if reply.has_error():
                out.failures[src] = error_reason(reply.error.reason)
                continue
            try:
                content = flower_records.read(reply.content, wire.message_type(mtype), "up")
            except ValueError as exc:  # accounted all the same: the bytes did cross
                out.failures[src] = f"reply cannot be read: {exc}"
                content = None
            if account:
                self._account(reply, "up", round, step, src, mtype, content)
            if content is None:
                continue
            out.replies[src] = content
            if mtype not in wire.SETUP:
                self.warm.add(src)
        for node, mid in missing.items():  # no reply within the timeout: the node stays busy
            self.outstanding[node] = mid
            out.failures[node] = f"no reply within {timeout} s"
        return out

    def _account(self, message: Message, direction: str, round: int, step: int, node: int, mtype: str,
                 content=None) -> None:
        size = message_to_proto(message).ByteSize()
        self.messages_sent += 1
        partition = self.partitions.get(node, -1)
        if partition < 0 and content is not None and isinstance(content.meta, wire.NodeInfo):
            partition = content.meta.partition  # a reply to discovery names its partition
        for part in flower_records.parts(message.content):
            self.ledger.record(round=round, step=step, client=partition, direction=direction, kind=part.kind,
                               elements=part.elements, bits=part.bits, serialized_bytes=part.serialized_bytes,
                               message_bytes=size, message_type=mtype, message=self.messages_sent)


class GridTransport(MessageTransport):
    """Flower's Grid: push the messages, poll for replies."""

    def __init__(self, grid, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.grid = grid
        # seconds between reply polls: the simulation's in-memory grid is a local call (its own
        # default, 0.1 s, would double a step's latency); a deployment's grid is a request
        self.poll_interval = 0.002 if type(grid).__name__ == "InMemoryGrid" else 0.02

    def node_ids(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def _message(self, content, node: int, mtype: str) -> Message:
        return Message(content, dst_node_id=node, message_type=mtype)

    def _deliver(self, messages, timeout):
        ids = dict(zip(self.grid.push_messages(messages), (m.metadata.dst_node_id for m in messages)))
        waiting = set(ids)
        replies = []
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
            if waiting:
                time.sleep(self.poll_interval)
        return replies, {ids[mid]: mid for mid in waiting}

    def is_free(self, node: int) -> bool:
        mid = self.outstanding.get(node)
        if mid is None:
            return True
        if list(self.grid.pull_messages([mid])):
            del self.outstanding[node]
            return True
        return False
