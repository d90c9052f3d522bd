"""What an honest-but-curious server keeps of what it receives, for the attacks after training.

A seeded reservoir sample of whole training batches of the final round (whole: the learned
quantizer normalises with per-batch statistics), at most `attack-samples` samples: per batch
the payloads as they arrived, the question lengths, and what the label protocol brought (the
labels; or the logits the server sent and d loss / d logits; or, U-shaped, the hidden state
and its gradient). Nothing is asked of the clients: to score an attack, the rows of each kept
batch are recomputed from the client's seeded batch order (the server knows every client's
seed, data size and batch size) and checked against the question lengths that came with it.
Local-loss split learning sends a round's activations in one message: each client batch of it
is a candidate, as a step's would be (`rows_of`: its rows of the round's payload).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sltestbed import wire
from sltestbed.quantizers import Field, Payload, dequantize
from sltestbed.label_protocol import label_protocol
from sltestbed.privacy import Observation, ObservedBatch
from sltestbed.trainer import BatchCursor
from sltestbed.splits import client_data


class Observer:
    def __init__(self, cfg, clients, batch_size: int, log=print):
        self.cfg, self.log = cfg, log
        self.labels = label_protocol(cfg.labels)
        self.clients = {c.node_id: c for c in clients}
        self.offset, total = {}, 0  # a client's rows in the concatenation of every client's data
        for c in sorted(clients, key=lambda c: c.partition):
            self.offset[c.node_id], total = total, total + c.train_size
        self.cursors = {c.node_id: BatchCursor(c.train_size, batch_size, cfg.seed + c.partition) for c in clients}
        self.batch_size = batch_size
        self.slots = max(1, cfg.attack_samples // batch_size)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.seen = 0  # candidate batches so far
        self.kept: list[tuple[int, int, ObservedBatch]] = []  # (node, step, batch), at most `slots`
        self.rows: dict[int, torch.Tensor] = {}
        self.mismatched = 0

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps, by partition (a resumed run's nodes have new ids)."""
        partition = {n: c.partition for n, c in self.clients.items()}
        return {"cursors": {partition[n]: c.state() for n, c in self.cursors.items()},
                "rows": {partition[n]: r for n, r in self.rows.items()}, "generator": self.generator.get_state(),
                "seen": self.seen, "mismatched": self.mismatched,
                "kept": [(partition[n], step, batch) for n, step, batch in self.kept]}

    def load_checkpoint_state(self, state: dict) -> None:
        node = {c.partition: n for n, c in self.clients.items()}
        for p, cursor in state["cursors"].items():
            self.cursors[node[p]].load_state(cursor)
        self.rows = {node[p]: r for p, r in state["rows"].items()}
        self.generator.set_state(state["generator"])
        self.seen, self.mismatched = state["seen"], state["mismatched"]
        self.kept = [(node[p], step, batch) for p, step, batch in state["kept"]]

    def exchanged(self, rnd: int, step: int, requests: dict, replies: dict) -> None:
        """Every exchange of the strategy: training steps' activations (and, with the labels at
        the client, the server's output and the gradient that came back) are what it keeps."""
        for node, (mtype, request) in requests.items():
            if mtype == wire.STEP:
                self.sent(node)
            elif mtype == wire.ROUND:  # the round's batches, drawn one after another
                self.rows[node] = torch.cat([self.cursors[node].next() for _ in range(request.meta.local_steps)])
        for node, reply in replies.items():  # partition order
            mtype, request = requests[node]
            if mtype == wire.STEP:
                self.received(rnd, step, node, reply)
            elif mtype == wire.ROUND:
                self.received_round(rnd, node, reply)
            elif mtype == wire.LOGITS:
                self.answered(rnd, step, node, getattr(request, self.labels.output), reply.loss.grad)

    def sent(self, node: int) -> None:
        """A training step was requested of `node`: it draws its next batch."""
        self.rows[node] = self.cursors[node].next()

    def received_round(self, rnd: int, node: int, content) -> None:
        """Local-loss: `node`'s round of activations came in; each client batch of it is a
        candidate, its values sliced from the round's dequantized payload."""
        if rnd != self.cfg.num_rounds:
            return
        b, rows = self.batch_size, self.rows[node]
        for step, (acts, batch) in enumerate(wire.client_batches(content.acts, content.batch, b, rows_of)):
            self.received(rnd, step, node, SimpleNamespace(acts=acts, batch=batch), rows[step * b:(step + 1) * b])

    def received(self, rnd: int, step: int, node: int, content, rows: torch.Tensor | None = None) -> None:
        """`node`'s activations of this step came in (labels at the server, its labels too);
        `rows`: their rows (default: the step's batch drawn when it was requested)."""
        if rnd != self.cfg.num_rounds:
            return
        c = self.clients[node]
        rows = self.rows[node] if rows is None else rows
        true_lengths = client_data(self.cfg, c.partition, c.num_partitions)[0].lengths[rows]
        if not torch.equal(true_lengths, content.batch.lengths):
            self.mismatched += 1
            return
        batch = ObservedBatch(rows + self.offset[node], dict(content.acts), content.batch.lengths,
                              labels=content.batch.labels)
        self.seen += 1
        if len(self.kept) < self.slots:
            self.kept.append((node, step, batch))
        else:
            j = int(torch.randint(self.seen, (1,), generator=self.generator))
            if j < self.slots:
                self.kept[j] = (node, step, batch)

    def answered(self, rnd: int, step: int, node: int, output: torch.Tensor, grad: torch.Tensor) -> None:
        """Labels at the client: what the server sent down and the gradient that came back."""
        for n, s, batch in self.kept:
            if (n, s) == (node, step) and rnd == self.cfg.num_rounds:
                self.labels.keep(batch, output.detach(), grad)

    def observation(self) -> Observation | None:
        """The kept batches in partition and step order (None when none were kept)."""
        kept = sorted(self.kept, key=lambda k: (self.clients[k[0]].partition, k[1]))
        batches = [b for _, _, b in kept]
        batches = [b for b in batches if self.labels.usable(b)]  # a batch whose loss never came is of no use
        if self.mismatched:
            self.log(f"attacks: {self.mismatched} batch(es) left out (their rows did not match their question lengths)")
        if not batches:
            return None
        return Observation(batches, self.cfg.quantizer, dict(self.cfg.widths), self.cfg.labels)


def rows_of(payload: Payload, rows: slice, tokens: int | None = None) -> Payload | torch.Tensor:
    """The rows `rows` of a payload (its first `tokens` tokens only, if given), as a payload
    where its one field holds a code or value per element (learned, fsq, the float formats: the
    information ceiling then counts exactly what a step's payload would carry); otherwise (side
    information shared across rows) their dequantized values."""
    if len(payload.fields) != 1 or payload.fields[0].numel != payload.numel:
        values = dequantize(payload)[rows]
        return values if tokens is None else values[:, :tokens]
    field = payload.fields[0]
    data = field.data.reshape(payload.shape)[rows]
    data = (data if tokens is None else data[:, :tokens]).contiguous()
    return Payload(payload.scheme, payload.bits, tuple(data.shape), (Field(data, field.bits),), payload.params)
