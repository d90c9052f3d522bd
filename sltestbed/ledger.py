"""The byte ledger: one row per payload that crosses the link.

Three levels per row: `ideal_bytes` = ceil(elements * bits / 8) (the information sent at its
nominal width), `serialized_bytes` = what that payload adds to the message's protobuf
encoding (its codec header, side information and the record entry's framing included), and
`message_bytes` = the whole message it travelled in (shared by the payloads of one message).
For config and labels (lists of small integers) the ideal is nominal, 32 bits a value; protobuf
writes them as varints (one byte below 128), so their serialized bytes are the smaller. For
activations, gradients and the loss the ideal is what the codes or values need, below what is sent.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields

DIRECTIONS = ("up", "down")
KINDS = ("activations", "gradients", "logits", "loss", "labels", "model", "config")


@dataclass(frozen=True)
class LedgerRow:
    round: int
    step: int
    client: int  # partition id of the client
    direction: str  # up: client -> server, down: server -> client
    kind: str
    elements: int
    bits: int
    ideal_bytes: int
    serialized_bytes: int
    message_bytes: int
    message_type: str = ""
    message: int = -1  # sequence number of the message it travelled in (rows of one message share it)


def ideal_bytes(elements: int, bits: int) -> int:
    return math.ceil(elements * bits / 8)


class ByteLedger:
    def __init__(self):
        self.rows: list[LedgerRow] = []

    def record(self, *, round: int, step: int, client: int, direction: str, kind: str, elements: int, bits: int,
               serialized_bytes: int, message_bytes: int, message_type: str = "", message: int = -1) -> LedgerRow:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        row = LedgerRow(round, step, client, direction, kind, int(elements), int(bits),
                        ideal_bytes(elements, bits), int(serialized_bytes), int(message_bytes), message_type,
                        int(message))
        self.rows.append(row)
        return row

    def totals(self, rows=None) -> dict:
        """{direction: {kind: {"ideal": int, "serialized": int}}} over all (or the given) rows."""
        out: dict = defaultdict(lambda: defaultdict(lambda: {"ideal": 0, "serialized": 0}))
        for r in self.rows if rows is None else rows:
            cell = out[r.direction][r.kind]
            cell["ideal"] += r.ideal_bytes
            cell["serialized"] += r.serialized_bytes
        return {d: dict(k) for d, k in out.items()}

    def write_csv(self, path: str) -> None:
        names = [f.name for f in fields(LedgerRow)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for r in self.rows:
                writer.writerow(asdict(r))
