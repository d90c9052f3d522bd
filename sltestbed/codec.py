"""Wire codec: a `Payload` to bytes and back, exactly.

Layout (little-endian):

    magic "SL" | version u8 | total length u32
    scheme u8 | bits u8 | ndim u8 | nparams u8 | nfields u8
    shape u32 * ndim | params u32 * nparams
    per field: kind u8 | bits u8 | numel u32 | nbytes u32
    field data, in order
    crc32 u32 of everything before it

Field kinds: packed integer codes (ceil(n b / 8) bytes, zero padding bits), entropy-coded
codes (16-bit table + ANS words; used only where smaller than packed), raw float16 /
bfloat16 / float32. Which fields a payload has, and how many values each, follows from its
scheme, bits, shape and params (`QuantizerEncoder.wire_fields`).
A 3-D payload with one field has a 38-byte header and trailer. Decoding checks the length,
the checksum, the shape against the receiver's bounds and every count against the shape and
the bytes present before it builds anything, and raises `ValueError` naming what is wrong.
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
MAX_NUMEL = 1 << 26  # default bound on a decoded payload's elements (256 MiB as float32)


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
        if entropy and len(packed) > 2 * 2**field.bits:  # else its table alone is no smaller
            coded = entropy_coding.encode(data.cpu().numpy(), 2**field.bits)
            if len(coded) < len(packed):
                return ENTROPY, coded
        return PACKED, packed
    kind = _FLOAT_KINDS.get(data.dtype)
    if kind is None or _KIND_DTYPES[kind][1] != field.bits:
        raise ValueError(f"cannot send a field of dtype {data.dtype} at {field.bits} bits")
    return kind, memoryview(data.cpu().contiguous().view(torch.uint8).numpy())


def _check_layout(payload: Payload) -> None:
    """The fields against what the scheme sends for this header, as `decode` checks them."""
    specs = scheme_class(payload.scheme).wire_fields(payload.bits, payload.shape, payload.params)
    if len(specs) != len(payload.fields):
        raise ValueError(f"a '{payload.scheme}' payload has {len(specs)} field(s), got {len(payload.fields)}")
    for i, (spec, field) in enumerate(zip(specs, payload.fields)):
        if (field.numel, field.bits, field.data.dtype) != (spec.numel, spec.bits, spec.dtype):
            raise ValueError(f"field {i} of a '{payload.scheme}' payload of shape {payload.shape}: "
                             f"{field.numel} values of {field.bits} bits ({field.data.dtype}), the scheme sends "
                             f"{spec.numel} of {spec.bits} bits ({spec.dtype})")


def encode(payload: Payload, entropy: bool = False) -> Encoded:
    """Serialise a payload. With `entropy=True`, code fields are entropy coded where that
    is smaller than fixed-width packing (the table counted)."""
    if payload.scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {payload.scheme!r}")
    ndim, nparams, nfields = len(payload.shape), len(payload.params), len(payload.fields)
    if ndim > MAX_NDIM or nparams > 255 or not 1 <= nfields <= 255:
        raise ValueError(f"payload too complex to encode: ndim={ndim}, params={nparams}, fields={nfields}")
    if not all(0 <= v < 2**32 for v in (*payload.shape, *payload.params)):
        raise ValueError(f"payload shape {payload.shape} or params {payload.params} do not fit 32 bits")
    _check_layout(payload)
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
           expect_scheme: str | None = None, expect_shape=None, expect_bits: int | None = None,
           max_numel: int | None = MAX_NUMEL) -> Payload:
    """Bytes back to the exact payload; ValueError on a truncated, corrupted or foreign
    buffer, or (with `expect_*`) one that is not what the receiver expects.

    Every count in the header is checked against the shape, the scheme's layout and the bytes
    present before anything is allocated or decoded, so a buffer costs O(its length + the
    elements of its shape) time and memory. Packed and raw fields carry at least one bit per
    element, but an entropy-coded field can hold many elements in few bytes (a constant one
    in none), so the shape is bounded by `max_numel` elements (None: no bound; a receiver
    that knows the layout passes `expect_shape` or a tighter bound)."""
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
    if expect_scheme is not None and scheme != expect_scheme:
        raise ValueError(f"payload mismatch: expected scheme {expect_scheme!r}, got {scheme!r}")
    if expect_bits is not None and bits != expect_bits:
        raise ValueError(f"payload mismatch: expected {expect_bits} bits, got {bits}")
    cls = scheme_class(scheme)
    cls.check_bits(bits)
    if ndim > MAX_NDIM:
        raise ValueError(f"payload has {ndim} dimensions, more than {MAX_NDIM}")
    end_of_table = pos + 4 * (ndim + nparams) + _FIELD.size * nfields
    if end_of_table > total - _CRC.size:
        raise ValueError("payload corrupted: header longer than the payload")
    dims = struct.unpack_from(f"<{ndim}I{nparams}I", buf, pos)
    shape, params = tuple(dims[:ndim]), tuple(dims[ndim:])
    if expect_shape is not None and shape != tuple(expect_shape):
        raise ValueError(f"payload mismatch: expected shape {tuple(expect_shape)}, got {shape}")
    numel = math.prod(shape)
    if max_numel is not None and numel > max_numel:
        raise ValueError(f"payload of shape {shape} has {numel:,} elements, more than the {max_numel:,} allowed")
    specs = cls.wire_fields(bits, shape, params)  # what this scheme sends for this header
    if nfields != len(specs):
        raise ValueError(f"payload corrupted: a '{scheme}' payload has {len(specs)} field(s), the header says {nfields}")
    pos += 4 * (ndim + nparams)
    table = [_FIELD.unpack_from(buf, pos + i * _FIELD.size) for i in range(nfields)]
    pos = end_of_table
    if pos + sum(t[3] for t in table) != total - _CRC.size:
        raise ValueError("payload corrupted: field sizes do not add up to the payload length")
    view = memoryview(buf)
    chunks = []
    for i, (spec, (kind, fbits, count, nbytes)) in enumerate(zip(specs, table)):
        chunk = view[pos : pos + nbytes]
        pos += nbytes
        _check_field(f"field {i} of a '{scheme}' payload of shape {shape}", spec, kind, fbits, count, chunk)
        chunks.append(chunk)
    # every count and size is now the one the header implies: decode
    fields = tuple(_decode_field(kind, fbits, count, chunk, device)
                   for (kind, fbits, count, _), chunk in zip(table, chunks))
    payload = Payload(scheme, bits, shape, fields, params)
    cls.validate(payload)
    return payload


def _check_field(where: str, spec, kind: int, bits: int, numel: int, chunk: memoryview) -> None:
    """A field's table entry and bytes against what the scheme sends, before decoding."""
    if numel != spec.numel:
        raise ValueError(f"payload corrupted: {where} has {numel} elements, not {spec.numel}")
    if bits != spec.bits:
        raise ValueError(f"payload corrupted: {where} has {bits} bits per value, not {spec.bits}")
    nbytes = len(chunk)
    if spec.is_codes:
        packed = bitpack.packed_size(numel, bits)
        if kind == PACKED:
            if nbytes != packed:
                raise ValueError(f"payload corrupted: {where}: {numel} codes of {bits} bits pack into {packed} bytes, "
                                 f"not {nbytes}")
            spare = numel * bits % 8
            if spare and chunk[-1] >> spare:
                raise ValueError(f"payload corrupted: {where}: padding bits after the last code are not zero")
        elif kind == ENTROPY:
            if nbytes >= packed:
                raise ValueError(f"payload corrupted: {where}: entropy-coded in {nbytes} bytes, not fewer than "
                                 f"the {packed} of packing (the encoder packs then)")
            entropy_coding.split(chunk, 2**bits)
        else:
            raise ValueError(f"payload corrupted: {where}: kind {kind} where integer codes belong")
    else:
        if kind != _FLOAT_KINDS[spec.dtype]:
            raise ValueError(f"payload corrupted: {where}: kind {kind} where {spec.dtype} values belong")
        if nbytes != numel * bits // 8:
            raise ValueError(f"payload corrupted: {where}: {numel} values of {bits} bits cannot take {nbytes} bytes")


def _decode_field(kind: int, bits: int, numel: int, chunk: memoryview, device) -> Field:
    if kind == ENTROPY:
        codes = entropy_coding.decode(chunk, 2**bits, numel)
        return Field(torch.from_numpy(codes).to(device), bits)
    raw = torch.frombuffer(bytearray(chunk), dtype=torch.uint8) if len(chunk) else torch.empty(0, dtype=torch.uint8)
    if kind == PACKED:
        return Field(bitpack.unpack(raw.to(device), bits, numel), bits)
    return Field(raw.view(_KIND_DTYPES[kind][0]).to(device), bits)
