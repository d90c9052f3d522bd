"""Batching: records -> tensors (`VQACollator`) and a reproducible `DataLoader` (`make_loader`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase


class VQACollator:
    """Turn a list of VQA records into a batch of tensors.

    Returns a dict with
        pixel_values  float32 B x 3 x H x W, (image / 255 - mean) / std
        input_ids     long B x T, question tokens right-padded with the tokenizer's pad id
        lengths       long B, the number of real question tokens
        labels        long B, the answer's token id ([UNK]'s id for a word outside the vocabulary)
        qtype         list of B str
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_length: int | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.tokenizer = tokenizer
        mean = np.asarray(image_mean, dtype=np.float32).reshape(-1)
        std = np.asarray(image_std, dtype=np.float32).reshape(-1)
        if mean.size != 3 or std.size != 3 or bool((std <= 0).any()):
            raise ValueError(f"image_mean and image_std need 3 values, std > 0; got {image_mean}, {image_std}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be None or >= 1, got {max_length}")
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std
        self.max_length = max_length

    def __call__(self, records: Sequence[Mapping]) -> dict:
        if len(records) == 0:
            raise ValueError("cannot collate an empty batch")
        # numpy, single-threaded: tiny torch ops on 2 busy cores spend more time syncing threads
        pixels = np.stack([np.asarray(r["image"], dtype=np.float32) for r in records])  # B x H x W x 3
        pixels *= self.scale
        pixels += self.shift
        input_ids, lengths = self.encode_questions([str(r["question"]) for r in records])
        return {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
            "input_ids": input_ids,
            "lengths": lengths,
            "labels": torch.tensor([self.answer_id(str(r["answer"])) for r in records], dtype=torch.long),
            "qtype": [str(r["qtype"]) for r in records],
        }

    def encode_questions(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids B x T, right-padded, and the real lengths B (no special tokens added).

        Questions are encoded one by one, which keeps the batch encoder's thread pool from
        competing with torch's threads for the cores on small machines.
        """
        backend = self.tokenizer.backend_tokenizer
        encoded = [backend.encode(q, add_special_tokens=False).ids[: self.max_length] for q in questions]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
        input_ids = torch.full((len(encoded), int(lengths.max())), self.tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in zip(input_ids, encoded):
            row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return input_ids, lengths

    def answer_id(self, answer: str) -> int:
        """The token id of a one-word answer: the first token of " answer" (lower-cased, as it
        would follow the question). Under the word-level tokenizer that is the word's own id
        ([UNK]'s outside the vocabulary); a subword tokenizer may split a word, and the model
        predicts its first piece (`splits.check_answers` keeps distinct answers distinct)."""
        if len(answer.split()) != 1:
            raise ValueError(f"answers must be exactly one word, got {answer!r}")
        ids = self.tokenizer.backend_tokenizer.encode(" " + answer.lower(), add_special_tokens=False).ids
        if not ids:
            raise ValueError(f"the tokenizer gives the answer {answer!r} no token")
        return int(ids[0])


def make_loader(
    ds: Dataset,
    collator: VQACollator,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A `DataLoader` whose batch order depends only on `seed` (and the epoch: each pass reshuffles)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds.with_format("numpy", columns=["image"], output_all_columns=True),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collator,
        drop_last=drop_last,
        num_workers=num_workers,
    )
