import math
import struct
import zlib

import numpy as np
import pytest
import torch

from sltestbed import bitpack, codec, entropy_coding
from sltestbed.quantizers import SCHEMES, build_quantizer, dequantize, scheme_class

SHAPES = [(1,), (7,), (3, 5), (2, 3, 7), (2, 3, 5, 7)]

# The wire format as documented, written out here so the tests pin it rather than read it
# from the codec: prefix "SL" | version u8 | total u32, then scheme, bits, ndim, nparams,
# nfields (u8 each), shape and params (u32 each), one (kind u8, bits u8, count u32, bytes u32)
# per field, the field data, CRC32 of everything before it.
PREFIX, HEAD, ENTRY, CRC = struct.Struct("<2sBI"), struct.Struct("<5B"), struct.Struct("<BBII"), 4
PACKED_KIND, ENTROPY_KIND, F16_KIND, BF16_KIND, F32_KIND = range(5)


def parse(data: bytes, check: bool = True) -> dict:
    """Header fields and the byte offset of each field's data, read by the documented layout."""
    _, _, total = PREFIX.unpack_from(data)
    scheme_id, bits, ndim, nparams, nfields = HEAD.unpack_from(data, PREFIX.size)
    pos = PREFIX.size + HEAD.size
    dims = struct.unpack_from(f"<{ndim + nparams}I", data, pos)
    pos += 4 * (ndim + nparams)
    table_at = pos
    entries = [ENTRY.unpack_from(data, pos + i * ENTRY.size) for i in range(nfields)]
    pos += ENTRY.size * nfields
    offsets = []
    for entry in entries:
        offsets.append(pos)
        pos += entry[3]
    assert not check or pos + CRC == total == len(data)
    return {"scheme": SCHEMES[scheme_id], "bits": bits, "shape": dims[:ndim], "params": dims[ndim:],
            "entries": entries, "table_at": table_at, "offsets": offsets}


def resign(data) -> bytes:
    """Recompute the checksum after an edit, as a sender that means harm would."""
    data = bytearray(data)
    data[-CRC:] = struct.pack("<I", zlib.crc32(bytes(data[:-CRC])))
    return bytes(data)


def edit_entry(data: bytes, field: int, *, count=None, nbytes=None, kind=None, bits=None) -> bytes:
    """Rewrite one field-table entry and re-sign."""
    info = parse(data, check=False)
    at = info["table_at"] + field * ENTRY.size
    old = ENTRY.unpack_from(data, at)
    new = (old[0] if kind is None else kind, old[1] if bits is None else bits,
           old[2] if count is None else count, old[3] if nbytes is None else nbytes)
    out = bytearray(data)
    ENTRY.pack_into(out, at, *new)
    return resign(out)


def heavy_tailed(shape, seed=0):
    """Gaussian scale mixture: most values small, a few large, so codes are peaked."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.exp(1.5 * torch.randn(shape, generator=g))


def assert_same_payload(a, b):
    assert (a.scheme, a.bits, a.shape, a.params) == (b.scheme, b.bits, b.shape, b.params)
    assert len(a.fields) == len(b.fields)
    for fa, fb in zip(a.fields, b.fields):
        assert fa.bits == fb.bits and fa.data.dtype == fb.data.dtype
        assert torch.equal(fa.data.reshape(-1), fb.data.reshape(-1))


# --- bit packing ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_round_trip_and_size(bits):
    for n in [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 1001]:
        codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        before = codes.clone()
        packed = bitpack.pack(codes, bits)
        assert torch.equal(codes, before), n  # the caller's codes are read, never written
        assert packed.numel() == math.ceil(n * bits / 8), n
        assert torch.equal(bitpack.unpack(packed, bits, n), codes), n
        spare = n * bits % 8
        assert spare == 0 or int(packed[-1]) >> spare == 0, n  # padding bits are zero


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_multiply_packing_is_exact_for_every_word(bits):
    per = 8 // bits
    words = torch.cartesian_prod(*[torch.arange(2**bits)] * per).to(torch.uint8)  # every possible word
    packed = bitpack.pack(words.reshape(-1), bits)
    expected = sum(words[:, i].long() << (bits * i) for i in range(per))
    assert torch.equal(packed.long(), expected)


def test_pack_bit_order_is_little_endian():
    assert bitpack.pack(torch.tensor([1, 0, 3, 2], dtype=torch.uint8), 2).tolist() == [0b10_11_00_01]
    assert bitpack.pack(torch.tensor([5, 1], dtype=torch.uint8), 3).tolist() == [0b001_101]


# --- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEMES)
def test_codec_round_trip_is_exact(name):
    """Every bit width and shape of the scheme, fixed-width: codes packed, floats raw."""
    float_kinds = {torch.float16: F16_KIND, torch.bfloat16: BF16_KIND, torch.float32: F32_KIND}
    for bits in scheme_class(name).bits_range:
        for shape in SHAPES:
            case = (bits, shape)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            payload = build_quantizer(name, bits, dim=shape[-1])[0].encode(x)
            enc = codec.encode(payload)
            back = codec.decode(enc.data, expect_scheme=name, expect_shape=shape, expect_bits=bits)
            assert_same_payload(back, payload)
            assert torch.equal(dequantize(back), dequantize(payload)), case
            info = parse(enc.data)
            for field, (kind, fbits, count, nbytes) in zip(payload.fields, info["entries"]):
                expected_kind = PACKED_KIND if field.is_codes else float_kinds[field.data.dtype]
                assert (kind, fbits, count) == (expected_kind, field.bits, field.numel), case
                assert nbytes == math.ceil(count * fbits / 8), case
            assert enc.nbytes == enc.header_bytes + sum(enc.field_bytes) == len(enc.data), case


# the field holding each scheme's integer codes; topk's codes are its position mask
CODE_FIELD = {"learned": 0, "fsq": 0, "uniform": 0, "nf": 0, "topk": 1}


@pytest.mark.parametrize("name", list(CODE_FIELD))
def test_entropy_coded_round_trip_writes_the_entropy_kind(name):
    """16,384 peaked codes per bit width: the buffer must carry the entropy-coded kind, be
    smaller than fixed width, and decode exactly. Topk's mask is coded too: at b <= 7 it has
    fewer ones than zeros (b/16 of the positions); at 8 bits exactly half are set, which no
    code makes smaller than one bit each, so it must stay packed."""
    x = heavy_tailed((16, 32, 32))
    field = CODE_FIELD[name]
    for bits in scheme_class(name).bits_range:
        payload = build_quantizer(name, bits, dim=32)[0].encode(x)
        coded, plain = codec.encode(payload, entropy=True), codec.encode(payload)
        kind = parse(coded.data)["entries"][field][0]
        if name == "topk" and bits == 8:
            assert kind == PACKED_KIND and coded.data == plain.data
            continue
        assert kind == ENTROPY_KIND, (name, bits)
        assert parse(plain.data)["entries"][field][0] == PACKED_KIND
        assert coded.field_bytes[field] < plain.field_bytes[field], (name, bits)
        assert coded.nbytes == coded.header_bytes + sum(coded.field_bytes)
        back = codec.decode(coded.data, expect_scheme=name, expect_shape=x.shape, expect_bits=bits)
        assert_same_payload(back, payload)
        assert torch.equal(dequantize(back), dequantize(payload))


def test_entropy_coding_beats_entropy_bound_on_a_million_codes():
    rng = np.random.default_rng(0)
    z = np.clip(rng.normal(0, 1 / 3, 1_200_000), -1, 1)
    for bits in (1, 2, 3, 4, 8):
        codes = np.clip(np.rint((z + 1) * (2**bits - 1) / 2), 0, 2**bits - 1).astype(np.uint8)
        p = np.bincount(codes, minlength=2**bits) / codes.size
        p = p[p > 0]
        entropy = -(p * np.log2(p)).sum()
        payload = codec.Payload("learned", bits, (codes.size,), (codec.Field(torch.from_numpy(codes), bits),))
        enc = codec.encode(payload, entropy=True)
        # one bit splits a symmetric distribution in half: 1 bit of entropy, packing is as small
        assert parse(enc.data)["entries"][0][0] == (PACKED_KIND if bits == 1 else ENTROPY_KIND)
        table_bits = 16 * 2**bits
        data_bits = enc.field_bytes[0] * 8
        assert data_bits / codes.size <= entropy + 0.02 + table_bits / codes.size, bits
        assert torch.equal(codec.decode(enc.data).fields[0].data, payload.fields[0].data)


def test_entropy_mode_falls_back_to_fixed_width_when_not_smaller():
    codes = torch.randint(0, 4, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    payload = codec.Payload("learned", 2, (5000,), (codec.Field(codes, 2),))
    enc, fixed = codec.encode(payload, entropy=True), codec.encode(payload)
    assert enc.data == fixed.data  # uniform codes: the table makes coding larger, so it is not used
    assert parse(enc.data)["entries"][0][0] == PACKED_KIND


def test_constant_codes_code_to_the_table_alone():
    codes = torch.zeros(100_000, dtype=torch.uint8)
    payload = codec.Payload("learned", 2, (100_000,), (codec.Field(codes, 2),))
    enc = codec.encode(payload, entropy=True)
    assert enc.field_bytes == (2 * 4,)  # the 4-entry table; code 0 alone needs no words
    assert torch.equal(codec.decode(enc.data).fields[0].data, codes)


# --- bytes ---------------------------------------------------------------------------------

def test_header_and_checksum_bytes_are_as_documented():
    """A 3-D payload with one field carries 38 bytes besides its data; uniform (three fields,
    one parameter) 62, nf (two fields, one parameter) 52, topk (two fields) 48. The data
    length is worked out here from each scheme's definition."""
    shape = (4, 9, 6)
    n = math.prod(shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    cases = [(name, bits, 38, math.ceil(n * bits / 8)) for name in ("learned", "fsq") for bits in scheme_class(name).bits_range]
    cases += [("fp32", None, 38, 4 * n), ("fp16", None, 38, 2 * n), ("bf16", None, 38, 2 * n)]
    cases += [("uniform", b, 62, math.ceil(n * b / 8) + 4 + 4) for b in range(1, 9)]  # codes, min, scale
    cases += [("nf", b, 52, math.ceil(n * b / 8) + 4 * math.ceil(n / 64)) for b in range(2, 9)]  # codes, absmax per 64
    cases += [("topk", b, 48, 2 * math.ceil(n * b / 16) + math.ceil(n / 8)) for b in range(1, 9)]  # fp16 values, mask
    for name, bits, header, data_bytes in cases:
        enc = codec.encode(build_quantizer(name, bits, dim=shape[-1])[0].encode(x))
        assert len(enc.data) - data_bytes == header, (name, bits)
        assert enc.header_bytes == header and sum(enc.field_bytes) == data_bytes, (name, bits)


def test_per_channel_side_information_is_one_pair_per_channel():
    x = torch.randn(8, 16, 32)
    enc = codec.encode(build_quantizer("uniform", 4, per_channel=True)[0].encode(x))
    assert enc.field_bytes == (x.numel() * 4 // 8, 4 * 32, 4 * 32)
    assert len(enc.data) - sum(enc.field_bytes) == 62


def test_learned_payload_is_ceil_n_b_over_8_at_scale():
    shape = (4, 729, 64)
    x = torch.randn(shape)
    for bits in range(1, 9):
        payload = build_quantizer("learned", bits, dim=64)[0].encode(x)
        enc = codec.encode(payload)
        assert enc.field_bytes == (math.ceil(x.numel() * bits / 8),) and len(enc.data) == 38 + enc.field_bytes[0]
        assert payload.ideal_bytes == math.ceil(x.numel() * bits / 8)


# --- damaged and hostile buffers ------------------------------------------------------------

def _payload_bytes(entropy=False):
    x = torch.randn(3, 11, 8, generator=torch.Generator().manual_seed(0))
    return codec.encode(build_quantizer("uniform", 3)[0].encode(x), entropy=entropy).data


def _entropy_bytes():
    data = codec.encode(build_quantizer("learned", 4, dim=16)[0].encode(heavy_tailed((8, 16, 16))), entropy=True).data
    assert parse(data)["entries"][0][0] == ENTROPY_KIND
    return data


def test_truncated_buffer_raises():
    for data in (_payload_bytes(), _entropy_bytes()):
        for cut in [0, 1, 5, 10, 30, len(data) // 2, len(data) - 5, len(data) - 1]:
            with pytest.raises(ValueError, match="truncated"):
                codec.decode(data[:cut])


def test_every_single_byte_corruption_is_caught():
    for data in (_payload_bytes(), _entropy_bytes()):
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= 0x40
            with pytest.raises(ValueError):
                codec.decode(bytes(bad))


def test_corrupted_data_names_checksum():
    for data in (_payload_bytes(), _entropy_bytes()):
        bad = bytearray(data)
        bad[-10] ^= 1
        with pytest.raises(ValueError, match="checksum"):
            codec.decode(bytes(bad))


def test_entropy_coded_words_damaged_under_a_fresh_checksum_are_rejected():
    """Edits inside the coded words, re-signed so only the decoder's own checks can see them."""
    data = _entropy_bytes()
    info = parse(data)
    start, nbytes = info["offsets"][0], info["entries"][0][3]
    words_at = start + 2 * 16  # after the 16-entry frequency table
    for i in range(words_at, start + nbytes):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(ValueError, match="entropy-coded"):
                codec.decode(resign(bad))
    # a word fewer, a word more, a table entry changed: each re-signed with its length fixed
    short = bytearray(data[: start + nbytes - 4] + data[start + nbytes:])
    struct.pack_into("<I", short, 3, len(short))
    longer = bytearray(data[: start + nbytes] + b"\x01\0\0\0" + data[start + nbytes:])
    struct.pack_into("<I", longer, 3, len(longer))
    table = bytearray(data)
    struct.pack_into("<H", table, start + 2 * 3, struct.unpack_from("<H", data, start + 2 * 3)[0] ^ 0x10)
    cases = [(edit_entry(bytes(short), 0, nbytes=nbytes - 4), "entropy-coded"),
             (edit_entry(bytes(longer), 0, nbytes=nbytes + 4), "entropy-coded"),
             (resign(table), "entropy-coded")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            codec.decode(bad)


def test_foreign_and_mismatched_buffers():
    with pytest.raises(ValueError, match="not an sltestbed payload"):
        codec.decode(b"PK\x03\x04" + bytes(40))
    data = _payload_bytes()
    with pytest.raises(ValueError, match="trailing"):
        codec.decode(data + b"\0")
    with pytest.raises(ValueError, match="expected scheme 'learned'"):
        codec.decode(data, expect_scheme="learned")
    with pytest.raises(ValueError, match="expected shape"):
        codec.decode(data, expect_shape=(3, 11, 9))
    with pytest.raises(ValueError, match="expected 4 bits"):
        codec.decode(data, expect_bits=4)
    with pytest.raises(ValueError, match="more than the 263 allowed"):
        codec.decode(data, max_numel=263)
    assert codec.decode(data, max_numel=264).shape == (3, 11, 8)


def test_counts_that_disagree_with_the_shape_or_bytes_are_rejected_before_decoding():
    """One count changed and the checksum recomputed: every such buffer names its problem."""
    data = _payload_bytes()  # uniform, 3 bits, shape (3, 11, 8): codes, min, scale
    coded = _entropy_bytes()  # learned, 4 bits, shape (8, 16, 16), entropy-coded codes
    n = 3 * 11 * 8

    def with_shape(buf, *dims, count=None):
        out = bytearray(buf)
        struct.pack_into(f"<{len(dims)}I", out, PREFIX.size + HEAD.size, *dims)
        out = resign(out)
        return out if count is None else edit_entry(out, 0, count=count)

    cases = [
        (edit_entry(data, 0, count=2**28), "has 268435456 elements, not 264"),
        (edit_entry(data, 0, count=n - 1), "elements"),
        (edit_entry(coded, 0, count=2**32 - 1), "elements"),
        (with_shape(data, 4, 11, 8), "elements, not 352"),
        (with_shape(data, 2**16, 2**15, 1, count=2**31), "more than"),  # bounded by max_numel
        # consistent with the shape, but the words hold 2,048 codes: past them the decoder
        # yields zeros (which the table does not fit), or, with a word damaged, stalls
        (with_shape(coded, 2**26, 1, 1, count=2**26), "table does not match"),
        (with_shape(coded[:-8] + bytes([coded[-8] ^ 0x55]) + coded[-7:], 2**26, 1, 1, count=2**26), "words run out after"),
        (edit_entry(data, 0, nbytes=parse(data)["entries"][0][3] + 1), "add up"),
        (edit_entry(data, 1, count=2), "elements"),  # two minimums for a per-tensor payload
        (edit_entry(data, 0, kind=F32_KIND), "kind"),
        (edit_entry(data, 1, kind=PACKED_KIND), "kind"),
        (edit_entry(data, 0, bits=4), "bits"),
        (edit_entry(data, 0, kind=7), "kind"),
        (edit_entry(coded, 0, kind=PACKED_KIND), "pack into"),
    ]
    too_big = bytearray(coded)
    too_big[PREFIX.size + 1] = 1  # at 1 bit per code, coding is no longer smaller than packing
    cases.append((edit_entry(bytes(too_big), 0, bits=1), "not fewer than"))
    header_fields = bytearray(data)
    header_fields[PREFIX.size + 4] = 2  # nfields: uniform sends three
    cases.append((resign(header_fields), "field"))
    per_channel = bytearray(data)
    struct.pack_into("<I", per_channel, PREFIX.size + HEAD.size + 12, 2)  # the per-channel flag
    cases.append((resign(per_channel), "per-channel flag"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            codec.decode(bad)
        with pytest.raises(ValueError):
            codec.decode(bad, max_numel=None)


def test_scheme_rules_are_checked_on_decoded_values():
    x = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))
    # topk: the mask must select exactly as many positions as values came
    data = codec.encode(build_quantizer("topk", 2)[0].encode(x)).data
    mask_at = parse(data)["offsets"][1]
    bad = bytearray(data)
    bad[mask_at] ^= 0xFF
    with pytest.raises(ValueError, match="mask selects"):
        codec.decode(resign(bad))
    # uniform: a scale that is zero, negative or NaN is none the encoder writes
    data = codec.encode(build_quantizer("uniform", 4)[0].encode(x)).data
    scale_at = parse(data)["offsets"][2]
    for value in (0.0, -1.0, float("nan")):
        bad = bytearray(data)
        struct.pack_into("<f", bad, scale_at, value)
        with pytest.raises(ValueError, match="scale"):
            codec.decode(resign(bad))
    # nf: block scales positive and finite; the block size at least 1
    data = codec.encode(build_quantizer("nf", 4)[0].encode(x)).data
    bad = bytearray(data)
    struct.pack_into("<f", bad, parse(data)["offsets"][1], float("inf"))
    with pytest.raises(ValueError, match="block scales"):
        codec.decode(resign(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, PREFIX.size + HEAD.size + 12, 0)
    with pytest.raises(ValueError, match="block size"):
        codec.decode(resign(bad))
    # packed codes: the bits after the last code are zero
    data = codec.encode(build_quantizer("learned", 3, dim=5)[0].encode(torch.randn(3, 5))).data
    bad = bytearray(data)
    bad[parse(data)["offsets"][0] + math.ceil(15 * 3 / 8) - 1] |= 0x80
    with pytest.raises(ValueError, match="padding"):
        codec.decode(resign(bad))


def test_entropy_decoder_checks_its_count():
    """The words do not carry the number of codes: the decoder's checks must catch a wrong one."""
    rng = np.random.default_rng(0)
    codes = np.clip(np.rint(rng.normal(8, 2, 5000)), 0, 15).astype(np.uint8)
    buf = entropy_coding.encode(codes, 16)
    assert np.array_equal(entropy_coding.decode(buf, 16, 5000), codes)
    for n in (0, 1, 4999, 5001, 10**6):
        with pytest.raises(ValueError):
            entropy_coding.decode(buf, 16, n)
    with pytest.raises(ValueError, match="zero word"):
        entropy_coding.decode(buf + bytes(4), 16, 5000)
    with pytest.raises(ValueError, match="malformed"):
        entropy_coding.decode(buf[:-1], 16, 5000)
    with pytest.raises(ValueError, match="peaks"):
        entropy_coding.decode(bytes(32) + buf[32:], 16, 5000)



def test_entropy_decoder_stops_early_on_hostile_counts(monkeypatch):
    """A count far beyond what the words hold ends as soon as no encoding can go on, for a
    named reason, not after decoding all 2^26 codes (the codes decoded are counted)."""
    real = entropy_coding.constriction.stream.stack.AnsCoder
    decoded = []

    class CountingCoder:
        def __init__(self, words):
            self.inner = real(words)

        def decode(self, model, n):
            decoded.append(n)
            return self.inner.decode(model, n)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(entropy_coding.constriction.stream.stack, "AnsCoder", CountingCoder)
    table = np.array([65535, 0, 9, 0], "<u2").tobytes()
    with pytest.raises(ValueError, match="words run out after"):  # the decoder reaches a fixed point
        entropy_coding.decode(table + np.array([0x12345678], "<u4").tobytes(), 4, 2**26)
    assert 0 < sum(decoded) < 2**20
    decoded.clear()
    # code 1 alone, from a 64-bit state that only slowly runs down: a code 0, which the table
    # rules out, comes within the first million; without stopping there all 2^26 are decoded
    table = np.array([0, 65535], "<u2").tobytes()
    with pytest.raises(ValueError, match="code 0, which its frequency table says is absent"):
        entropy_coding.decode(table + np.array([0x8295A351, 0x4F1B65B9], "<u4").tobytes(), 2, 2**26)
    assert 0 < sum(decoded) < 2**22


def test_entropy_decoder_rejects_words_for_code_zero_alone():
    with pytest.raises(ValueError, match="code 0 alone"):  # code 0 alone codes to no words at all
        entropy_coding.decode(np.array([65535, 0], "<u2").tobytes() + np.array([5], "<u4").tobytes(), 2, 100)


def test_encode_refuses_a_payload_its_decoder_would_refuse():
    x = torch.randn(4, 8)
    good = build_quantizer("uniform", 4)[0].encode(x)
    bad = [
        codec.Payload("uniform", 4, (4, 8), good.fields[:2], good.params),  # scale missing
        codec.Payload("uniform", 4, (4, 9), good.fields, good.params),  # shape disagrees with the codes
        codec.Payload("fp32", 32, (4, 8), (codec.Field(x.half(), 32),)),  # float16 data sent as fp32
        codec.Payload("learned", 4, (4, 8), good.fields[:1], (1,)),  # a parameter learned does not take
    ]
    for payload in bad:
        with pytest.raises(ValueError):
            codec.encode(payload)
