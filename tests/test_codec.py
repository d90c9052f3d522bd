import math
import struct

import numpy as np
import pytest
import torch

from sltestbed import bitpack, codec
from sltestbed.quantizers import SCHEMES, build_quantizer, dequantize, scheme_class

SHAPES = [(1,), (7,), (3, 5), (2, 3, 7), (2, 3, 5, 7)]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 1001])
def test_pack_round_trip_and_size(bits, n):
    codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    packed = bitpack.pack(codes, bits)
    assert packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(bitpack.unpack(packed, bits, n), codes)


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


@pytest.mark.parametrize("name,bits", [(n, b) for n in SCHEMES for b in scheme_class(n).bits_range])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("entropy", [False, True])
def test_codec_round_trip_is_exact(name, bits, shape, entropy):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    payload = build_quantizer(name, bits, dim=shape[-1])[0].encode(x)
    enc = codec.encode(payload, entropy=entropy)
    back = codec.decode(enc.data, expect_scheme=name, expect_shape=shape)
    assert back.scheme == name and back.bits == bits and back.shape == shape and back.params == payload.params
    for a, b in zip(payload.fields, back.fields):
        assert a.bits == b.bits and a.data.dtype == b.data.dtype
        assert torch.equal(a.data.reshape(-1), b.data.reshape(-1))
    assert torch.equal(dequantize(back), dequantize(payload))
    assert enc.nbytes == enc.header_bytes + sum(enc.field_bytes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES + [(4, 729, 64)])
def test_payload_bytes_are_ceil_n_b_over_8(bits, shape):
    x = torch.randn(shape)
    payload = build_quantizer("learned", bits, dim=shape[-1])[0].encode(x)
    enc = codec.encode(payload)
    n = math.prod(shape)
    assert enc.field_bytes == (math.ceil(n * bits / 8),)
    assert enc.header_bytes == codec.header_size(len(shape), 0, 1) <= 50
    assert payload.ideal_bytes == math.ceil(n * bits / 8)


def test_side_information_is_small_and_stated():
    x = torch.randn(8, 16, 32)
    enc = codec.encode(build_quantizer("uniform", 4)[0].encode(x))
    assert enc.field_bytes[1:] == (4, 4)  # min and scale, float32
    enc = codec.encode(build_quantizer("uniform", 4, per_channel=True)[0].encode(x))
    assert enc.field_bytes[1:] == (4 * 32, 4 * 32)
    enc = codec.encode(build_quantizer("nf", 4)[0].encode(x))
    assert enc.field_bytes[1] == 4 * math.ceil(x.numel() / 64)
    assert enc.header_bytes < 80


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
        fixed = codec.encode(payload, entropy=False)
        table_bits = 16 * 2**bits
        assert enc.nbytes <= fixed.nbytes
        data_bits = enc.field_bytes[0] * 8
        assert data_bits / codes.size <= entropy + 0.02 + table_bits / codes.size, bits
        assert torch.equal(codec.decode(enc.data).fields[0].data, payload.fields[0].data)


def test_entropy_mode_falls_back_to_fixed_width_when_not_smaller():
    codes = torch.randint(0, 4, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    payload = codec.Payload("learned", 2, (5000,), (codec.Field(codes, 2),))
    enc, fixed = codec.encode(payload, entropy=True), codec.encode(payload)
    assert enc.data == fixed.data  # uniform codes: the table makes coding larger, so it is not used


def _payload_bytes():
    x = torch.randn(3, 11, 8, generator=torch.Generator().manual_seed(0))
    return codec.encode(build_quantizer("uniform", 3)[0].encode(x)).data


@pytest.mark.parametrize("cut", [0, 1, 5, 10, 30, -1])
def test_truncated_buffer_raises(cut):
    data = _payload_bytes()
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(data[:cut] if cut >= 0 else data[:-1])


def test_every_single_byte_corruption_is_caught():
    data = _payload_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ValueError):
            codec.decode(bytes(bad))


def test_corrupted_data_names_checksum():
    bad = bytearray(_payload_bytes())
    bad[-10] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        codec.decode(bytes(bad))


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


def test_consistent_checksum_does_not_hide_a_bad_shape():
    data = bytearray(_payload_bytes())
    # rewrite the first dimension and re-sign: counts no longer match the shape
    offset = codec._PREFIX.size + codec._HEAD.size
    struct.pack_into("<I", data, offset, 4)
    body = bytes(data[:-4])
    import zlib
    data[-4:] = struct.pack("<I", zlib.crc32(body))
    with pytest.raises(ValueError, match="elements for shape"):
        codec.decode(bytes(data))
