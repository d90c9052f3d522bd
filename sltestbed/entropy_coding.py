"""Entropy coding of integer codes with `constriction` (asymmetric numeral systems).

The model is fitted to the message: a histogram of its codes, quantized to 16-bit
frequencies (the most frequent code at 65535), which travels in front of the compressed
words (2 bytes per level) and is counted with them.

The words do not say how many codes they hold (a stream of code 0 alone is empty), so the
decoder takes the count from the caller, who must bound it. It decodes in growing blocks and
stops early where no encoding can go on: a code the table says is absent, a coder stuck with
no words left; at the end the words must be used up and the codes give back the table.
"""

from __future__ import annotations

import constriction
import numpy as np

TABLE_DTYPE = np.dtype("<u2")
WORD_DTYPE = np.dtype("<u4")
TABLE_MAX = 65535  # the frequency of the most frequent code
BLOCK = 1 << 20  # codes per call into the coder: bounds its int32 copies


def _model(freqs: np.ndarray):
    return constriction.stream.model.Categorical(freqs.astype(np.float64), perfect=False)


def _counts(codes: np.ndarray, levels: int) -> np.ndarray:
    """How often each of 0..levels-1 occurs, a block at a time (bincount widens to int64)."""
    counts = np.zeros(levels, dtype=np.int64)
    for start in range(0, codes.size, BLOCK):
        block = np.bincount(codes[start:start + BLOCK], minlength=levels)
        if block.size > levels:
            raise ValueError(f"code {block.size - 1} is out of range for {levels} levels")
        counts += block
    return counts


def _table(counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64)
    freqs = np.floor(counts / counts.max() * float(TABLE_MAX))
    freqs[(counts > 0) & (freqs == 0)] = 1
    return freqs.astype(TABLE_DTYPE)


def fit_table(codes: np.ndarray, levels: int) -> np.ndarray:
    """Histogram scaled to 16-bit frequencies; every symbol present keeps a count >= 1."""
    return _table(_counts(codes, levels))


def encode(codes: np.ndarray, levels: int) -> bytes:
    """Table + ANS words for integer codes in 0..levels-1 (at least one)."""
    codes = codes.reshape(-1)
    if codes.size == 0:
        raise ValueError("no codes to entropy code")
    table = fit_table(codes, levels)
    model = _model(table)
    coder = constriction.stream.stack.AnsCoder()
    last = (codes.size - 1) // BLOCK * BLOCK
    for start in range(last, -1, -BLOCK):  # a stack: the last block goes in first
        coder.encode_reverse(codes[start:start + BLOCK].astype(np.int32), model)
    return table.tobytes() + coder.get_compressed().astype(WORD_DTYPE).tobytes()


def split(buf: bytes | memoryview, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The frequency table and the words of a coded field, checked without decoding:
    2 bytes per level, then whole 32-bit words, the last one nonzero (the coder never
    ends on a zero word); the table's largest entry is 65535 as `fit_table` writes it."""
    table_bytes = levels * TABLE_DTYPE.itemsize
    if len(buf) < table_bytes or (len(buf) - table_bytes) % WORD_DTYPE.itemsize:
        raise ValueError(f"entropy-coded field of {len(buf)} bytes is malformed for {levels} levels "
                         f"(a {table_bytes}-byte table, then 4-byte words)")
    table = np.frombuffer(buf, dtype=TABLE_DTYPE, count=levels)
    if int(table.max()) != TABLE_MAX:
        raise ValueError(f"entropy-coded field: frequency table peaks at {int(table.max())}, not {TABLE_MAX}")
    words = np.frombuffer(buf, dtype=WORD_DTYPE, offset=table_bytes).astype(np.uint32)
    if words.size and words[-1] == 0:
        raise ValueError("entropy-coded field ends in a zero word")
    if words.size and table[0] == TABLE_MAX and not table[1:].any():
        raise ValueError("entropy-coded field of code 0 alone has words (its coding is empty)")
    return table, words


def _stalled(coder, model) -> bool:
    """Whether the coder sits in a fixed point: with no words left and a state below
    2^24, one more code that leaves the state as it was means it yields that code for ever
    and never becomes empty. Consumes nothing unless it is stalled (it works on a clone)."""
    probe = coder.clone()
    before = probe.get_compressed()
    probe.decode(model, 1)
    return not probe.is_empty() and np.array_equal(probe.get_compressed(), before)


def decode(buf: bytes | memoryview, levels: int, n: int) -> np.ndarray:
    """n codes (uint8) back from `encode`'s bytes. Time and memory are O(len(buf) + n), so
    the caller bounds n; ValueError if the bytes are not exactly n codes' encoding."""
    if n < 0:
        raise ValueError(f"cannot decode {n} codes")
    table, words = split(buf, levels)
    model = _model(table)
    out = np.empty(n, dtype=np.uint8)
    counts = np.zeros(levels, dtype=np.int64)
    absent = table == 0  # codes the message does not hold: decoding one ends it
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        start, size = 0, 1024  # blocks grow to BLOCK: a stream that stalls is seen early
        while start < n:
            if coder.is_empty():
                # an empty coder yields code 0 and stays empty (a stream ending in zeros
                # leaves them out): one code shows it, then the rest are filled in
                block = coder.decode(model, 1)
                if block[0] == 0 and coder.is_empty():
                    out[start:] = 0
                    counts[0] += n - start
                    start = n
                    break
            elif coder.num_valid_bits() <= 24 and _stalled(coder, model):
                break
            else:
                block = coder.decode(model, min(size, n - start))
                size = min(2 * size, BLOCK)
            out[start:start + block.size] = block
            counts += np.bincount(out[start:start + block.size], minlength=levels)
            start += block.size
            if counts[absent].any():
                break
    except Exception as exc:  # constriction raises its own types on inconsistent data
        raise ValueError(f"entropy-coded field could not be decoded: {exc}") from exc
    if counts[absent].any():
        raise ValueError(f"entropy-coded field decodes code {int(np.flatnonzero(counts * absent)[0])}, "
                         f"which its frequency table says is absent")
    if start < n:
        raise ValueError(f"entropy-coded field: its words run out after {start:,} of {n:,} codes")
    if not coder.is_empty():
        raise ValueError("entropy-coded field has data left after its codes")
    if n and not np.array_equal(_table(counts), table):
        raise ValueError("entropy-coded field: its frequency table does not match its decoded codes")
    return out
