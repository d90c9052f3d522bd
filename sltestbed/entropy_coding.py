"""Entropy coding of integer codes with `constriction` (asymmetric numeral systems).

The model is fitted to the message: a histogram of its codes, quantized to 16-bit
frequencies, which travels in front of the compressed words (2 bytes per level) and is
counted with them.
"""

from __future__ import annotations

import numpy as np
import constriction

TABLE_DTYPE = np.dtype("<u2")
WORD_DTYPE = np.dtype("<u4")


def _model(freqs: np.ndarray):
    return constriction.stream.model.Categorical(freqs.astype(np.float64), perfect=False)


def fit_table(codes: np.ndarray, levels: int) -> np.ndarray:
    """Histogram scaled to 16-bit frequencies; every symbol present keeps a count >= 1."""
    counts = np.bincount(codes, minlength=levels).astype(np.float64)
    freqs = np.floor(counts / counts.max() * 65535.0)
    freqs[(counts > 0) & (freqs == 0)] = 1
    return freqs.astype(TABLE_DTYPE)


def encode(codes: np.ndarray, levels: int) -> bytes:
    """Table + ANS words for integer codes in 0..levels-1."""
    table = fit_table(codes, levels)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(codes.astype(np.int32, copy=False), _model(table))
    return table.tobytes() + coder.get_compressed().astype(WORD_DTYPE).tobytes()


def decode(buf: bytes, levels: int, n: int) -> np.ndarray:
    table_bytes = levels * TABLE_DTYPE.itemsize
    if len(buf) < table_bytes or (len(buf) - table_bytes) % WORD_DTYPE.itemsize:
        raise ValueError(f"entropy-coded field of {len(buf)} bytes is malformed for {levels} levels")
    table = np.frombuffer(buf[:table_bytes], dtype=TABLE_DTYPE)
    if not table.any():
        raise ValueError("entropy-coded field has an all-zero frequency table")
    words = np.frombuffer(buf[table_bytes:], dtype=WORD_DTYPE).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        codes = coder.decode(_model(table), n)
    except Exception as exc:  # constriction raises its own types on inconsistent data
        raise ValueError(f"entropy-coded field could not be decoded: {exc}") from exc
    if not coder.is_empty():
        raise ValueError("entropy-coded field has trailing data after its codes")
    return codes.astype(np.uint8)
