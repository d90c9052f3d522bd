"""A word-level tokenizer over the questions and answers of VQA data sets."""

from __future__ import annotations

from collections.abc import Iterable

from datasets import Dataset
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS)  # ids 0, 1, 2


def build_tokenizer(
    sources: Dataset | str | Iterable[Dataset | str], columns: Iterable[str] = ("question", "answer")
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: specials [PAD]=0, [UNK]=1, [BOS]=2, then every word, sorted.

    `sources` are data sets (their `columns` are read) and/or plain texts. Text is lower-cased
    and split on whitespace, so every (single-word) answer is exactly one token. Nothing is
    added automatically around a sequence; padding is on the right.
    """
    columns = tuple(columns)
    if isinstance(sources, (Dataset, str)):
        sources = [sources]
    words: set[str] = set()
    for source in sources:
        if isinstance(source, str):
            words.update(source.lower().split())
            continue
        if not isinstance(source, Dataset):
            raise ValueError(f"sources must be datasets.Dataset or str, got {type(source).__name__}")
        for column in columns:
            if column not in source.column_names:
                raise ValueError(f"column {column!r} not found; available columns: {', '.join(source.column_names)}")
            for text in source.unique(column):
                words.update(str(text).lower().split())
    words.difference_update(SPECIAL_TOKENS)
    if not words:
        raise ValueError("no words found to build a vocabulary from")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, padding_side="right"
    )
