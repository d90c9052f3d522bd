"""Summary numbers for a VQA data set."""

from __future__ import annotations

from collections import Counter, defaultdict

from datasets import Dataset


def answer_counts(ds: Dataset) -> dict[str, Counter]:
    """For each question type, a Counter of its answers."""
    counts: dict[str, Counter] = defaultdict(Counter)
    plain = ds.with_format(None)
    for qtype, answer in zip(plain["qtype"], plain["answer"]):
        counts[qtype][answer] += 1
    return dict(sorted(counts.items()))


def majority_baseline(ds: Dataset) -> dict[str, float]:
    """For each question type, the accuracy of always giving its most common answer."""
    return {
        qtype: counter.most_common(1)[0][1] / sum(counter.values()) for qtype, counter in answer_counts(ds).items()
    }
