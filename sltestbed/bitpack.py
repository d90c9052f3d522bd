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
        per = 8 // bits
        v = torch.nn.functional.pad(flat, (0, (-n) % per)).view(-1, per)
        out = torch.empty(v.shape[0], dtype=torch.uint8, device=v.device).copy_(v[:, 0])
        for i in range(1, per):
            out |= v[:, i] << (bits * i)
        return out
    # 3, 5, 6, 7 bits: 8 codes make `bits` whole bytes; assemble them in an int64
    v = torch.nn.functional.pad(flat, (0, (-n) % 8)).view(-1, 8).to(torch.int64)
    acc = torch.empty(v.shape[0], dtype=torch.int64, device=v.device).copy_(v[:, 0])
    for i in range(1, 8):
        acc |= v[:, i] << (bits * i)
    if not _little_endian(acc.device):
        raise RuntimeError("bit packing assumes a little-endian device")
    return acc.view(torch.uint8).view(-1, 8)[:, :bits].reshape(-1)[: packed_size(n, bits)].contiguous()


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
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        return ((packed[:, None] >> shifts) & mask).reshape(-1)[:n]
    groups = math.ceil(n / 8)
    raw = torch.zeros(groups, 8, dtype=torch.uint8, device=packed.device)
    padded = torch.nn.functional.pad(packed, (0, groups * bits - packed.numel())).view(groups, bits)
    raw[:, :bits] = padded
    acc = raw.view(torch.int64).view(-1)
    shifts = torch.arange(0, 8 * bits, bits, device=packed.device, dtype=torch.int64)
    return ((acc[:, None] >> shifts) & mask).to(torch.uint8).reshape(-1)[:n]


def _little_endian(device) -> bool:
    probe = torch.tensor([1], dtype=torch.int64, device=device).view(torch.uint8)
    return int(probe[0]) == 1
