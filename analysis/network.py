"""A network time model: the time a round spends communicating, from a run's real bytes.

Each client has its own link (uplink and downlink bandwidth, round-trip latency); the
server's link is not the bottleneck. One exchange of the strategy (the server sends one
message to each of its clients and waits for the replies: a split step, an evaluation, a
hand-off) costs one latency plus the slowest client's transfer, down then up:

    t(exchange) = rtt + max over its clients of (down bytes / downlink + up bytes / uplink)

with the bytes of the whole serialized messages (`message_bytes` in the ledger). Where
clients take turns (sequential, SplitFed v2) an exchange has one client. A round's time is
the sum over its exchanges; set-up (round 0: discovery, calibration) is reported apart.
This leaves out Flower's own transport framing (HTTP/gRPC, TLS) and TCP slow start.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .runs import TURN_TAKING, Run, group_sort_key


@dataclass(frozen=True)
class Link:
    name: str
    up_mbps: float  # client -> server, megabits per second
    down_mbps: float  # server -> client
    rtt_ms: float  # round-trip latency

    def __post_init__(self):
        for field in ("up_mbps", "down_mbps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"link {self.name!r}: {field} must be > 0, got {getattr(self, field)}")
        if self.rtt_ms < 0:
            raise ValueError(f"link {self.name!r}: rtt_ms must be >= 0, got {self.rtt_ms}")

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
    parts = values.split(",")
    try:
        up, down, rtt = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"network {text!r}: expected NAME=UP,DOWN,RTT with three numbers "
                         "(Mbit/s up, Mbit/s down, ms round trip)") from None
    return Link(name, up, down, rtt)


def exchanges(run: Run) -> pd.DataFrame:
    """One row per (exchange, client): round, its down and up message bytes."""
    messages = run.messages()
    keys = ["round", "step", "message_type"] + (["client"] if run.strategy in TURN_TAKING else [])
    per_client = messages.pivot_table(index=keys + (["client"] if "client" not in keys else []), columns="direction",
                                      values="message_bytes", aggfunc="sum", fill_value=0).reset_index()
    for d in ("up", "down"):
        if d not in per_client:
            per_client[d] = 0
    per_client["exchange"] = per_client.groupby(keys, sort=False).ngroup()
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
    rows = []
    for run in runs:
        row = {"strategy": run.strategy, "quantizer": run.quantizer, "bits": run.bits,
               "entropy_coding": run.entropy_coding}
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
    keys = ["strategy", "quantizer", "bits_key", "entropy_coding"]
    table = frame.groupby(keys, sort=False).agg(
        {"bits": "first", **{c: "mean" for c in frame.columns if c not in keys + ["bits"]}}).reset_index()
    table["seeds"] = frame.groupby(keys, sort=False).size().values
    table = table.drop(columns="bits_key")
    order = sorted(range(len(table)), key=lambda i: group_sort_key(
        (table.strategy[i], table.quantizer[i], table.bits[i], table.entropy_coding[i])))
    front = ["strategy", "quantizer", "bits", "entropy_coding", "seeds"]
    return table.iloc[order].reset_index(drop=True)[front + [c for c in table.columns if c not in front]]


def shown(table: pd.DataFrame, links: list[Link]) -> pd.DataFrame:
    out = pd.DataFrame({"strategy": table.strategy, "quantizer": table.quantizer, "bits": table.bits.astype(str),
                        "entropy coding": ["yes" if v else "no" for v in table.entropy_coding],
                        "exchanges / round": [f"{v:.0f}" for v in table.exchanges_per_round],
                        "MB up / round": [f"{v / 1e6:,.2f}" for v in table.up_bytes_per_round],
                        "MB down / round": [f"{v / 1e6:,.2f}" for v in table.down_bytes_per_round]})
    for link in links:
        out[f"{link.name} s / round"] = [f"{v:,.2f}" for v in table[f"{link.name}_seconds_per_round"]]
    return out
