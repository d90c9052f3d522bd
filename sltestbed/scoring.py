"""Exact-match scoring per question type: the one place accuracy is counted.

Every path that reports an accuracy goes through `Scores`: the centralized trainer's
evaluation, the server scoring logits against labels it holds, a client scoring the logits
it was sent against its own labels, and the server combining the clients' counts.
Counts are kept, not ratios, so shards combine exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Scores:
    """Correct and seen answers per question type."""

    correct: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, predicted: torch.Tensor, labels: torch.Tensor, qtype_index: torch.Tensor,
           qtypes: list[str]) -> "Scores":
        """Counts of one batch: `predicted` and `labels` answer token ids, `qtype_index` each
        question's index into `qtypes`."""
        if not predicted.shape == labels.shape == qtype_index.shape:
            raise ValueError(f"predictions {tuple(predicted.shape)}, labels {tuple(labels.shape)} and question "
                             f"types {tuple(qtype_index.shape)} must have one entry per question")
        if qtype_index.numel() and not 0 <= int(qtype_index.min()) <= int(qtype_index.max()) < len(qtypes):
            raise ValueError(f"question-type index out of range for {len(qtypes)} types")
        hit = (predicted == labels).long()
        correct = torch.zeros(len(qtypes), dtype=torch.long).index_add_(0, qtype_index, hit)
        seen = torch.zeros(len(qtypes), dtype=torch.long).index_add_(0, qtype_index, torch.ones_like(hit))
        return cls({q: float(c) for q, c in zip(qtypes, correct.tolist())},
                   {q: float(n) for q, n in zip(qtypes, seen.tolist())})

    def __add__(self, other: "Scores") -> "Scores":
        keys = list(dict.fromkeys([*self.seen, *other.seen]))
        return Scores({q: self.correct.get(q, 0.0) + other.correct.get(q, 0.0) for q in keys},
                      {q: self.seen.get(q, 0.0) + other.seen.get(q, 0.0) for q in keys})

    @property
    def accuracy(self) -> float:
        """Correct over seen, all types together (NaN when nothing was scored)."""
        total = sum(self.seen.values())
        return sum(self.correct.values()) / total if total else float("nan")

    @property
    def accuracy_by_type(self) -> dict[str, float]:
        return {q: self.correct[q] / self.seen[q] for q in sorted(self.seen) if self.seen[q]}

    def result(self) -> dict:
        return {"accuracy": self.accuracy, "accuracy_by_type": self.accuracy_by_type}
