"""The one seam between a strategy and its clients.

A strategy hands a transport one request per node (message type and `wire.Content`), all
sent in one round trip, and gets back the replies that came plus, per node, why none came.
A transport counts every byte it moves in its ledger and the round trips it made.

Two implementations: Flower's Grid (`app.grid_transport.GridTransport`), and an
in-process one that calls the ClientApp's handler directly (`app.in_process`), which
the strategies' unit tests use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from sltestbed.ledger import ByteLedger
from sltestbed.wire import Content


@dataclass
class Exchange:
    """What one round trip brought back."""

    replies: dict[int, Content] = field(default_factory=dict)  # node -> reply
    failures: dict[int, str] = field(default_factory=dict)  # node -> why it has no reply


class Transport(ABC):
    ledger: ByteLedger
    round_trips: int
    partitions: dict[int, int]  # node -> partition id, once discovery has told (names ledger rows)

    @abstractmethod
    def node_ids(self) -> list[int]:
        """The connected nodes."""

    @abstractmethod
    def exchange(self, requests: dict[int, tuple[str, Content]], round: int, step: int,
                 account: bool = True) -> Exchange:
        """Send each node its request, all in one round trip; return what came back.
        `account=False` keeps the messages out of the ledger (the round-trip benchmark's)."""

    @abstractmethod
    def is_free(self, node: int) -> bool:
        """Whether `node` may take a message: a node whose last reply never came takes no new
        message until that reply is in (never two messages outstanding to one node)."""

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps of the transport: the ledger's rows and the counts."""
        return {"rows": list(self.ledger.rows), "round_trips": self.round_trips}

    def load_checkpoint_state(self, state: dict) -> None:
        self.ledger.rows = list(state["rows"])
        self.round_trips = state["round_trips"]


@dataclass
class Failure:
    """A node left out of one exchange, and why."""

    round: int
    step: int
    partition: int
    message_type: str
    reason: str


def record_failure(transport: Transport, failures: list[Failure], round: int, step: int, node: int, mtype: str,
                   reason: str, log=print) -> None:
    """`node` is left out of this exchange: recorded in `failures` (by partition) and logged."""
    failure = Failure(round, step, transport.partitions.get(node, -1), mtype, reason)
    failures.append(failure)
    log(f"round {round} step {step}: partition {failure.partition} dropped ({mtype}: {reason})")


def exchange(transport: Transport, requests: dict[int, tuple[str, Content]], round: int, step: int,
             failures: list[Failure], log=print, account: bool = True) -> dict[int, Content]:
    """One round trip under the failure rule every strategy follows: a node that fails or stays
    silent is recorded in `failures` and left out of this exchange. The replies come in
    partition order: node ids are drawn at random each run, and the order in which replies
    are joined into one batch (or averaged) changes floating-point sums."""
    result = transport.exchange(requests, round, step, account)
    for node, reason in result.failures.items():
        record_failure(transport, failures, round, step, node, requests[node][0], reason, log)
    return dict(sorted(result.replies.items(), key=lambda kv: (transport.partitions.get(kv[0], -1), kv[0])))
