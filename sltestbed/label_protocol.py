"""Where the labels live, and everything that follows from it: one object per `labels` mode.

    mode       up with a training batch   down for the loss         round trips  loss at  head at
    server     activations, labels        -                         1            server   server
    client     activations                logits                    2            client   server
    u-shaped   activations                hidden state (answer pos) 2            client   client

With the labels on the client the server sends its output down and the client answers with
the loss and d loss / d output (train.logits), and at evaluation scores the output against
its own labels (evaluate.score). The strategies, the client node, the observer, the
round-trip benchmark, the model's split, the cut profile and the privacy attacks ask the
protocol (`label_protocol(cfg.labels)`) instead of branching on the mode's name.

Importing this module imports no torch: `analysis` reads `private` from it.
"""

from __future__ import annotations


class LabelProtocol:
    name: str = ""
    round_trips: int = 1  # per training step, and per evaluation
    output: str | None = None  # what the server sends down for the loss: None, "logits" or "hidden"
    head_on_client: bool = False  # U-shaped: the head (the answer's last layer) is on the client
    grad_field: str | None = None  # the `ObservedBatch` field of d loss / d output

    @property
    def private(self) -> bool:
        """The labels never leave the client (there is something for a label attack to infer)."""
        return self.output is not None

    # --- the client's side ------------------------------------------------------------------
    def batch_up(self, lengths, labels, qtype=None):
        """What rides up with a batch's activations: the question lengths, and where the server
        holds the labels, the labels (and at evaluation the question types it scores by)."""
        from .wire import Batch

        return Batch(lengths, labels, qtype) if not self.private else Batch(lengths)

    # --- the server's side ------------------------------------------------------------------
    def losses(self, outputs: dict, ask) -> dict:
        """Training, after the server's forward: per node the client's `LossReply` content
        (`ask(requests)` makes one round trip); {} where the server holds the labels."""
        return {}

    def backward(self, server, nodes: list[int], batches: dict, answers: dict) -> tuple[float, int, list]:
        """The server part's backward for `nodes` (one group, one forward): (loss summed over
        samples, samples, each node's gradient payload or None)."""
        raise NotImplementedError

    def scores(self, predicted: dict, ask, question_types):
        """Evaluation: `predicted` {node: (server output, the batch that came up)} scored where
        the labels are; a `Scores` sum."""
        raise NotImplementedError

    def to_client(self, output):
        """The message content that carries the server's output down."""
        from .wire import Content

        return Content(**{self.output: output})

    # --- what a curious server keeps, and what a profile counts ----------------------------------
    def keep(self, observed, output, grad) -> None:
        """Store on an `ObservedBatch` what the label protocol showed the server."""
        setattr(observed, self.output, output)
        setattr(observed, self.grad_field, grad)

    def usable(self, observed) -> bool:
        """Whether a kept batch has what the label attacks need (its loss came back)."""
        return True

    def output_elements(self, vocab_size: int, hidden_size: int) -> int:
        """Elements per sample sent down for the loss."""
        return 0

    def up_elements(self, vocab_size: int, hidden_size: int) -> int:
        """Elements per sample the protocol adds going up: the label; or the loss and its
        gradient w.r.t. the output."""
        return 1 if not self.private else self.output_elements(vocab_size, hidden_size) + 1


class LabelsAtServer(LabelProtocol):
    name, round_trips = "server", 1

    def backward(self, server, nodes, batches, answers):
        loss, grads = server.backward_from_labels([batches[n].labels for n in nodes])
        samples = sum(len(batches[n].lengths) for n in nodes)
        return loss * samples, samples, grads

    def scores(self, predicted, ask, question_types):
        from .scoring import Scores

        total = Scores()
        for output, batch in predicted.values():
            total += Scores.of(output.argmax(-1), batch.labels, batch.qtype, question_types)
        return total

    def to_client(self, output):
        raise ValueError("labels at the server: the server sends no output down")


class LabelsAtClient(LabelProtocol):
    name, round_trips, output, grad_field = "client", 2, "logits", "logit_grads"

    def losses(self, outputs, ask):
        from .wire import LOGITS

        return ask({n: (LOGITS, self.to_client(out)) for n, out in outputs.items()})

    def backward(self, server, nodes, batches, answers):
        grads = server.backward_from_output_grads([answers[n].loss.grad if n in answers else None for n in nodes])
        came = [n for n in nodes if n in answers]
        return (sum(answers[n].loss.loss * len(batches[n].lengths) for n in came),
                sum(len(batches[n].lengths) for n in came), grads)

    def scores(self, predicted, ask, question_types):
        from .scoring import Scores
        from .wire import SCORE

        total = Scores()
        for content in ask({n: (SCORE, self.to_client(out)) for n, (out, _) in predicted.items()}).values():
            total += content.score
        return total

    def usable(self, observed):
        return getattr(observed, self.grad_field) is not None

    def output_elements(self, vocab_size, hidden_size):
        return vocab_size


class UShaped(LabelsAtClient):
    name, output, grad_field, head_on_client = "u-shaped", "hidden", "hidden_grads", True

    def output_elements(self, vocab_size, hidden_size):
        return hidden_size


PROTOCOLS: dict[str, LabelProtocol] = {p.name: p for p in (LabelsAtServer(), LabelsAtClient(), UShaped())}
LABELS = tuple(PROTOCOLS)  # where the labels (and the loss) live; U-shaped: the head too


def label_protocol(name: str) -> LabelProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {name!r}") from None
