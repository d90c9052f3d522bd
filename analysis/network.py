"""A network time model: the time a round spends communicating, from a run's real bytes.

Each client has its own link (uplink and downlink bandwidth, round-trip latency); the
server's link is not the bottleneck. One exchange of the strategy (the server sends one
message to each of its clients and waits for the replies: a split step, an evaluation, a
hand-off) costs one latency plus the slowest client's transfer, down then up:

    t(exchange) = rtt + max over its clients of (down bytes / downlink + up bytes / uplink)

with the bytes of the whole serialized messages (`message_bytes` in the ledger). The ledger
numbers messages in the order the server sent or received them (`message`), and an exchange
sends all its messages down before it takes any reply: so an exchange is a run of messages of
one (round, step, message type), down then up, and a message down after one up (or a second
message to or from the same client) starts the next. Where clients take turns (sequential,
SplitFed v2) a training step is an exchange with one client, while their evaluation (and
SplitFed v2's collection of client parts for averaging) is one exchange with every client;
sequential's hand-over of the client part is an exchange with its holder. A ledger without
message numbers falls back to one exchange per (round, step, message type), and per client as
well for the turn-taking strategies. A round's time is the sum over its exchanges; set-up
(round 0: discovery, calibration) is reported apart. This leaves out Flower's own transport
framing (HTTP/gRPC, TLS) and TCP slow start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .run_dirs import TURN_TAKING, Run, group_sort_key, label_settings


@dataclass(frozen=True)
class Link:
    name: str
    up_mbps: float  # client -> server, megabits per second
    down_mbps: float  # server -> client
    rtt_ms: float  # round-trip latency

    def __post_init__(self):
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"link name {self.name!r}: must be non-empty, without surrounding spaces")
        for field in ("up_mbps", "down_mbps"):
            if not (getattr(self, field) > 0 and math.isfinite(getattr(self, field))):
                raise ValueError(f"link {self.name!r}: {field} must be a finite number > 0, got {getattr(self, field)}")
        if not (self.rtt_ms >= 0 and math.isfinite(self.rtt_ms)):
            raise ValueError(f"link {self.name!r}: rtt_ms must be a finite number >= 0, got {self.rtt_ms}")

    def describe(self) -> str:
        return f"{self.name}: {self.up_mbps:g} Mbit/s up, {self.down_mbps:g} Mbit/s down, {self.rtt_ms:g} ms RTT"


# typical figures, stated as assumptions (median mobile 4G uplinks are a few Mbit/s)
PRESETS = {
    "4g": Link("4g", up_mbps=5.0, down_mbps=20.0, rtt_ms=60.0),
    "wifi": Link("wifi", up_mbps=50.0, down_mbps=100.0, rtt_ms=10.0),
    "ethernet": Link("ethernet", up_mbps=1000.0, down_mbps=1000.0, rtt_ms=1.0),
}


def parse_link(text: str) -> Link:
    """A preset name, or 'NAME=UP,DOWN,RTT' (Mbit/s, Mbit/s, ms)."""
    if "=" not in text:
        try:
            return PRESETS[text]
        except KeyError:
            raise ValueError(f"unknown network {text!r}: use one of {', '.join(PRESETS)} or NAME=UP,DOWN,RTT "
                             "(Mbit/s up, Mbit/s down, ms round trip)") from None
    name, _, values = text.partition("=")
    if not name.strip():
        raise ValueError(f"network {text!r}: the link has no name (expected NAME=UP,DOWN,RTT)")
    parts = values.split(",")
    try:
        up, down, rtt = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"network {text!r}: expected NAME=UP,DOWN,RTT with three numbers "
                         "(Mbit/s up, Mbit/s down, ms round trip)") from None
    return Link(name, up, down, rtt)


def exchanges(run: Run) -> pd.DataFrame:
    """One row per (exchange, client): the exchange's number, round, the client's down and up
    message bytes in it (see the module doc for how exchanges are told apart)."""
    messages = run.messages()
    if "message" in messages and (messages.message >= 0).all():
        messages = messages.sort_values("message", kind="stable").reset_index(drop=True)
        numbers, current, last_key, last_direction, seen = [], -1, None, None, set()
        for key, client, direction in zip(zip(messages["round"], messages.step, messages.message_type),
                                          messages.client, messages.direction):
            if key != last_key or (direction == "down" and last_direction == "up") or (client, direction) in seen:
                current, seen = current + 1, set()
            numbers.append(current)
            seen.add((client, direction))
            last_key, last_direction = key, direction
        messages["exchange"] = numbers
    else:  # no message numbers: one exchange per (round, step, type), per client where clients take turns
        keys = ["round", "step", "message_type"] + (["client"] if run.strategy in TURN_TAKING else [])
        messages = messages.assign(exchange=messages.groupby(keys, sort=False).ngroup())
    per_client = messages.pivot_table(index=["exchange", "round", "client"], columns="direction",
                                      values="message_bytes", aggfunc="sum", fill_value=0).reset_index()
    per_client.columns.name = None
    for d in ("up", "down"):
        if d not in per_client:
            per_client[d] = 0
    return per_client


def round_times(run: Run, link: Link) -> pd.DataFrame:
    """Per round: exchanges, message bytes up and down, and the seconds spent communicating."""
    per_client = exchanges(run)
    per_client["seconds"] = per_client.down * 8 / (link.down_mbps * 1e6) + per_client.up * 8 / (link.up_mbps * 1e6)
    by_exchange = per_client.groupby("exchange").agg(round=("round", "first"), seconds=("seconds", "max"),
                                                     up=("up", "sum"), down=("down", "sum"))
    by_exchange["seconds"] += link.rtt_ms / 1e3
    return by_exchange.groupby("round").agg(exchanges=("seconds", "size"), up_bytes=("up", "sum"),
                                            down_bytes=("down", "sum"), seconds=("seconds", "sum")).reset_index()


def network_table(runs: list[Run], links: list[Link]) -> pd.DataFrame:
    """Per setting (means over seeds): per training round the exchanges, bytes up and down, and
    for each link the seconds spent communicating (a round's mean over rounds >= 1)."""
    if not runs:
        raise ValueError("no runs to tabulate")
    names = [link.name for link in links]
    if len(set(names)) < len(names):
        raise ValueError(f"two links with one name: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    label_settings(runs)
    rows = []
    for run in runs:
        row = {"strategy": run.strategy, "quantizer": run.quantizer, "bits": run.bits,
               "entropy_coding": run.entropy_coding, "settings": run.settings}
        for link in links:
            times = round_times(run, link)
            rounds = times[times["round"] >= 1]
            row.update({"exchanges_per_round": rounds.exchanges.mean(), "up_bytes_per_round": rounds.up_bytes.mean(),
                        "down_bytes_per_round": rounds.down_bytes.mean()})
            row[f"{link.name}_seconds_per_round"] = rounds.seconds.mean()
            row[f"{link.name}_setup_seconds"] = times[times["round"] < 1].seconds.sum()
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["bits_key"] = frame.bits.astype(str)
    keys = ["strategy", "quantizer", "bits_key", "entropy_coding", "settings"]
    table = frame.groupby(keys, sort=False).agg(
        {"bits": "first", **{c: "mean" for c in frame.columns if c not in keys + ["bits"]}}).reset_index()
    table["seeds"] = frame.groupby(keys, sort=False).size().values
    table = table.drop(columns="bits_key")
    order = sorted(range(len(table)), key=lambda i: group_sort_key(
        (table.strategy[i], table.quantizer[i], table.bits[i], table.entropy_coding[i], table.settings[i])))
    front = ["strategy", "quantizer", "bits", "entropy_coding", "settings", "seeds"]
    return table.iloc[order].reset_index(drop=True)[front + [c for c in table.columns if c not in front]]


def shown(table: pd.DataFrame, links: list[Link]) -> pd.DataFrame:
    settings = {"settings": table.settings} if (table.settings != "").any() else {}  # only where runs differ
    out = pd.DataFrame({"strategy": table.strategy, **settings,
                        "quantizer": table.quantizer, "bits": table.bits.astype(str),
                        "entropy coding": ["yes" if v else "no" for v in table.entropy_coding],
                        "exchanges / round": [f"{v:g}" for v in table.exchanges_per_round],  # a mean over rounds
                        "MB up / round": [f"{v / 1e6:,.2f}" for v in table.up_bytes_per_round],
                        "MB down / round": [f"{v / 1e6:,.2f}" for v in table.down_bytes_per_round]})
    for link in links:
        out[f"{link.name} s / round"] = [f"{v:,.2f}" for v in table[f"{link.name}_seconds_per_round"]]
    return out
