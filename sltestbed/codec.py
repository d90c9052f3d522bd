"""Wire codec: a `Payload` to bytes and back, exactly.

Layout (little-endian):

    magic "SL" | version u8 | total length u32
    scheme u8 | bits u8 | ndim u8 | nparams u8 | nfields u8
    shape u32 * ndim | params u32 * nparams
    per field: kind u8 | bits u8 | numel u32 | nbytes u32
    field data, in order
    crc32 u32 of everything before it

Field kinds: packed integer codes (ceil(n b / 8) bytes), entropy-coded codes (16-bit table +
ANS words; used only where smaller than packed), raw float16 / bfloat16 / float32.
A 3-D payload with one field has a 38-byte header and trailer. Decoding checks the length,
the checksum and every count against the shape before it builds anything, and raises
`ValueError` naming what is wrong.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import torch

from . import bitpack, entropy_coding
from .quantizers import SCHEMES, Field, Payload, scheme_class

MAGIC = b"SL"
VERSION = 1
_PREFIX = struct.Struct("<2sBI")  # magic, version, total length
_HEAD = struct.Struct("<BBBBB")
_FIELD = struct.Struct("<BBII")
_CRC = struct.Struct("<I")

PACKED, ENTROPY, F16, BF16, F32 = range(5)
_FLOAT_KINDS = {torch.float16: F16, torch.bfloat16: BF16, torch.float32: F32}
_KIND_DTYPES = {F16: (torch.float16, 16), BF16: (torch.bfloat16, 16), F32: (torch.float32, 32)}
MAX_NDIM = 16


@dataclass(frozen=True)
class Encoded:
    """Bytes of one payload and how they split up."""

    data: bytes
    header_bytes: int  # prefix, header, field table and checksum
    field_bytes: tuple[int, ...]  # bytes of each field's data

    @property
    def nbytes(self) -> int:
        return len(self.data)


def header_size(ndim: int, nparams: int, nfields: int) -> int:
    return _PREFIX.size + _HEAD.size + 4 * ndim + 4 * nparams + _FIELD.size * nfields + _CRC.size


def _field_bytes(field: Field, entropy: bool) -> tuple[int, bytes]:
    data = field.data.detach().reshape(-1)
    if field.is_codes:
        packed = memoryview(bitpack.pack(data, field.bits).cpu().numpy())
        if entropy:
            coded = entropy_coding.encode(data.cpu().numpy(), 2**field.bits)
            if len(coded) < len(packed):
                return ENTROPY, coded
        return PACKED, packed
    kind = _FLOAT_KINDS.get(data.dtype)
    if kind is None or _KIND_DTYPES[kind][1] != field.bits:
        raise ValueError(f"cannot send a field of dtype {data.dtype} at {field.bits} bits")
    return kind, memoryview(data.cpu().contiguous().view(torch.uint8).numpy())


def encode(payload: Payload, entropy: bool = False) -> Encoded:
    """Serialise a payload. With `entropy=True`, code fields are entropy coded where that
    is smaller than fixed-width packing (the table counted)."""
    if payload.scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {payload.scheme!r}")
    ndim, nparams, nfields = len(payload.shape), len(payload.params), len(payload.fields)
    if ndim > MAX_NDIM or nparams > 255 or not 1 <= nfields <= 255:
        raise ValueError(f"payload too complex to encode: ndim={ndim}, params={nparams}, fields={nfields}")
    parts = [_field_bytes(f, entropy) for f in payload.fields]
    head = bytearray(_HEAD.pack(SCHEMES.index(payload.scheme), payload.bits, ndim, nparams, nfields))
    head += struct.pack(f"<{ndim}I{nparams}I", *payload.shape, *payload.params)
    for field, (kind, data) in zip(payload.fields, parts):
        head += _FIELD.pack(kind, field.bits, field.numel, len(data))
    total = _PREFIX.size + len(head) + sum(len(d) for _, d in parts) + _CRC.size
    out = bytearray(total)
    _PREFIX.pack_into(out, 0, MAGIC, VERSION, total)
    pos = _PREFIX.size
    for chunk in (head, *(d for _, d in parts)):
        out[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    _CRC.pack_into(out, pos, zlib.crc32(memoryview(out)[:pos]))
    return Encoded(bytes(out), header_size(ndim, nparams, nfields), tuple(len(d) for _, d in parts))


@dataclass(frozen=True)
class Description:
    """What a payload holds, read from its header alone (no checksum, no decoding)."""

    scheme: str
    bits: int
    shape: tuple[int, ...]
    ideal_bits: int  # every field: codes at their width, side information, masks

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def describe(buf: bytes | bytearray | memoryview) -> Description:
    """Scheme, bits, shape and ideal size of an encoded payload, for accounting."""
    buf = memoryview(buf)
    if len(buf) < _PREFIX.size + _HEAD.size:
        raise ValueError(f"payload truncated: {len(buf)} bytes is shorter than any header")
    pos = _PREFIX.size
    scheme_id, bits, ndim, nparams, nfields = _HEAD.unpack_from(buf, pos)
    pos += _HEAD.size
    if scheme_id >= len(SCHEMES) or len(buf) < pos + 4 * (ndim + nparams) + _FIELD.size * nfields:
        raise ValueError("payload header is corrupted or truncated")
    shape = struct.unpack_from(f"<{ndim}I", buf, pos)
    pos += 4 * (ndim + nparams)
    table = [_FIELD.unpack_from(buf, pos + i * _FIELD.size) for i in range(nfields)]
    return Description(SCHEMES[scheme_id], bits, tuple(shape), sum(fbits * numel for _, fbits, numel, _ in table))


def decode(buf: bytes | bytearray | memoryview, device: str | torch.device = "cpu",
           expect_scheme: str | None = None, expect_shape=None) -> Payload:
    """Bytes back to the exact payload; ValueError on a truncated, corrupted or foreign
    buffer, or (with `expect_*`) one that is not what the receiver expects."""
    buf = bytes(buf)
    if len(buf) < _PREFIX.size + _HEAD.size + _CRC.size:
        raise ValueError(f"payload truncated: {len(buf)} bytes is shorter than any header")
    magic, version, total = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise ValueError(f"not an sltestbed payload (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ValueError(f"payload version {version} is not supported (this build reads {VERSION})")
    if len(buf) < total:
        raise ValueError(f"payload truncated: header says {total} bytes, got {len(buf)}")
    if len(buf) > total:
        raise ValueError(f"payload has {len(buf) - total} trailing bytes after its {total} bytes")
    (crc,) = _CRC.unpack_from(buf, total - _CRC.size)
    if zlib.crc32(buf[: total - _CRC.size]) != crc:
        raise ValueError("payload corrupted: checksum mismatch")

    pos = _PREFIX.size
    scheme_id, bits, ndim, nparams, nfields = _HEAD.unpack_from(buf, pos)
    pos += _HEAD.size
    if scheme_id >= len(SCHEMES):
        raise ValueError(f"payload names unknown scheme id {scheme_id}")
    scheme = SCHEMES[scheme_id]
    scheme_class(scheme).check_bits(bits)
    if ndim > MAX_NDIM:
        raise ValueError(f"payload has {ndim} dimensions, more than {MAX_NDIM}")
    end_of_table = pos + 4 * (ndim + nparams) + _FIELD.size * nfields
    if end_of_table > total - _CRC.size:
        raise ValueError("payload corrupted: header longer than the payload")
    dims = struct.unpack_from(f"<{ndim}I{nparams}I", buf, pos)
    shape, params = tuple(dims[:ndim]), tuple(dims[ndim:])
    pos += 4 * (ndim + nparams)
    table = [_FIELD.unpack_from(buf, pos + i * _FIELD.size) for i in range(nfields)]
    pos = end_of_table
    if pos + sum(t[3] for t in table) != total - _CRC.size:
        raise ValueError("payload corrupted: field sizes do not add up to the payload length")
    fields = []
    for kind, fbits, numel, nbytes in table:
        chunk = buf[pos : pos + nbytes]
        pos += nbytes
        fields.append(_decode_field(kind, fbits, numel, chunk, device))
    payload = Payload(scheme, bits, shape, tuple(fields), params)
    # every scheme but topk sends one code per element first; topk's mask covers every element
    counted = fields[-1] if scheme == "topk" else fields[0]
    if counted.numel != math.prod(shape):
        raise ValueError(f"payload corrupted: {counted.numel} elements for shape {shape}")
    if expect_scheme is not None and scheme != expect_scheme:
        raise ValueError(f"payload mismatch: expected scheme {expect_scheme!r}, got {scheme!r}")
    if expect_shape is not None and shape != tuple(expect_shape):
        raise ValueError(f"payload mismatch: expected shape {tuple(expect_shape)}, got {shape}")
    return payload


def _decode_field(kind: int, bits: int, numel: int, chunk: bytes, device) -> Field:
    if kind == PACKED:
        if not 1 <= bits <= 8:
            raise ValueError(f"packed field with {bits} bits per code")
        packed = torch.frombuffer(bytearray(chunk), dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
        return Field(bitpack.unpack(packed.to(device), bits, numel), bits)
    if kind == ENTROPY:
        if not 1 <= bits <= 8:
            raise ValueError(f"entropy-coded field with {bits} bits per code")
        codes = entropy_coding.decode(chunk, 2**bits, numel)
        return Field(torch.from_numpy(codes).to(device), bits)
    if kind in _KIND_DTYPES:
        dtype, width = _KIND_DTYPES[kind]
        if bits != width or len(chunk) != numel * width // 8:
            raise ValueError(f"float field: {numel} values of {width} bits cannot take {len(chunk)} bytes")
        raw = torch.frombuffer(bytearray(chunk), dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
        return Field(raw.view(dtype).to(device), bits)
    raise ValueError(f"payload has a field of unknown kind {kind}")
