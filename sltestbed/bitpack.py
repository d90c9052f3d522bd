"""Sub-byte packing of integer codes: n codes of b bits (1..8) take ceil(n b / 8) bytes.

Vectorised torch on whatever device the codes live on; little-endian bit order (the first
code sits in the lowest bits of the first byte).
"""

from __future__ import annotations

import math

import torch


def packed_size(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"pack width must be 1..8 bits, got {bits!r}")


_MAGIC = {
    1: (torch.int64, sum(1 << (49 - 7 * i) for i in range(8)), 49),
    2: (torch.int32, 0x41041, 18),
    4: (torch.int16, 17, 4),
}


def _lane_mask(lo: int, hi: int, lane: int) -> int:
    """An int64 (as a signed Python int) with bits lo..hi-1 of every `lane`-bit lane set."""
    m = 0
    for start in range(0, 64, lane):
        m |= ((1 << hi) - (1 << lo)) << start
    return m - (1 << 64) if m >= 1 << 63 else m


def _swar_steps(bits: int):
    """For each lane width L (16, 32, 64): a half lane holds c = L/16 * bits bits of codes at
    its low end; packing moves the high half's c bits down by L/2 - c, next to the low half's."""
    for lane in (16, 32, 64):
        c = lane // 16 * bits
        yield lane // 2 - c, _lane_mask(0, c, lane), _lane_mask(c, 2 * c, lane)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (each < 2**bits) -> uint8 tensor of ceil(n bits / 8) bytes."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    n = flat.numel()
    if bits == 8:
        return flat.contiguous()
    if 8 % bits == 0:  # whole codes per byte: 1, 2 or 4 bits
        # Read 8/b codes (one per byte) as one integer word and gather their low bits into one
        # byte with a single multiply: every code lands at bit SHIFT + b*i of the product,
        # every cross term below SHIFT (no carry) or above SHIFT + 7 (tests check all words).
        dtype, magic, shift = _MAGIC[bits]
        per = 8 // bits
        v = flat.contiguous() if n % per == 0 else torch.nn.functional.pad(flat, (0, (-n) % per))
        return ((v.view(dtype) * magic) >> shift).to(torch.uint8)
    # 3, 5, 6, 7 bits: read 8 codes (one per byte) as one int64 and squeeze out the gaps in
    # three steps (byte pairs, then 16-bit pairs, then 32-bit pairs), which leaves the 8 codes
    # in the low 8 b bits: the group's b bytes, little-endian
    v = flat.contiguous() if n % 8 == 0 else torch.nn.functional.pad(flat, (0, (-n) % 8))
    w = v.view(torch.int64)  # may share the caller's codes: read only
    out, high_half = torch.empty_like(w), torch.empty_like(w)
    for gap, low, high in _swar_steps(bits):  # in place, into two buffers (a fresh tensor per op costs more)
        torch.bitwise_right_shift(w, gap, out=high_half).bitwise_and_(high)
        torch.bitwise_and(w, low, out=out).bitwise_or_(high_half)
        w = out
    return w.view(torch.uint8).view(-1, 8)[:, :bits].reshape(-1)[: packed_size(n, bits)].contiguous()


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: the first n codes, as uint8."""
    _check_bits(bits)
    need = packed_size(n, bits)
    if packed.numel() != need:
        raise ValueError(f"{n} codes of {bits} bits take {need} bytes, got {packed.numel()}")
    packed = packed.reshape(-1)
    if bits == 8:
        return packed.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        return ((packed[:, None] >> shifts) & mask).reshape(-1)[:n]
    groups = math.ceil(n / 8)
    raw = torch.zeros(groups, 8, dtype=torch.uint8, device=packed.device)
    raw[:, :bits] = torch.nn.functional.pad(packed, (0, groups * bits - packed.numel())).view(groups, bits)
    w = raw.view(torch.int64).view(-1)
    high_half = torch.empty_like(w)
    for gap, low, high in reversed(list(_swar_steps(bits))):  # spread the codes back, one per byte, in place
        torch.bitwise_and(w, high, out=high_half).bitwise_left_shift_(gap)
        w.bitwise_and_(low).bitwise_or_(high_half)
    return w.view(torch.uint8).bitwise_and_(mask).reshape(-1)[:n]


def _little_endian(device) -> bool:
    probe = torch.tensor([1], dtype=torch.int64, device=device).view(torch.uint8)
    return int(probe[0]) == 1
