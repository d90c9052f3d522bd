"""The quick part of the codec fuzzing: a few thousand hostile buffers in this process, the
oracle's own failure modes, and the driver's death accounting in a worker process."""

import math
import struct
import zlib

import pytest
import torch

from harness import fuzz
from sltestbed import codec
from sltestbed.quantizers import build_quantizer, scheme_class


@pytest.fixture(scope="module")
def corpus():
    seeds = fuzz.seed_corpus()
    layouts = [fuzz.Layout.parse(s) for s in seeds]
    max_numel = 2 * max(math.prod(codec.decode(s).shape) for s in seeds)
    return seeds, layouts, max_numel


def test_seeds_cover_every_scheme_bit_width_and_entropy_mode(corpus):
    seeds, layouts, _ = corpus
    described = [codec.describe(s) for s in seeds]
    assert all(codec.decode(s) is not None for s in seeds)
    for name in ("learned", "fsq", "uniform", "nf", "topk"):
        widths = {d.bits for d in described if d.scheme == name}
        assert widths == set(scheme_class(name).bits_range), name
        coded = {d.bits for d, lay in zip(described, layouts) if d.scheme == name and
                 any(e[0] == fuzz.ENTROPY for e in lay.entries)}
        assert coded, name  # some of its buffers carry entropy-coded codes
    assert {"fp32", "fp16", "bf16"} <= {d.scheme for d in described}


def test_cases_are_deterministic_and_never_the_seed(corpus):
    seeds, layouts, _ = corpus
    for index in range(200):
        a, b = fuzz.make_case(seeds, layouts, index, seed=7), fuzz.make_case(seeds, layouts, index, seed=7)
        assert a == b
        assert a.data not in seeds
    assert [fuzz.make_case(seeds, layouts, i, seed=1).data for i in range(20)] != \
           [fuzz.make_case(seeds, layouts, i, seed=2).data for i in range(20)]


def test_quick_fuzz_only_raises_value_error_and_decodes_only_consistent_payloads(corpus):
    seeds, layouts, max_numel = corpus
    n = 4000
    stats = fuzz.run_cases(seeds, 0, n, seed=0, max_numel=max_numel, layouts=layouts)
    assert stats.tried == n
    assert stats.other == 0, stats.examples
    assert stats.silent == 0, stats.examples  # no unsigned edit decodes; every decode re-encodes to itself
    assert stats.value_errors + stats.decoded == n
    # both outcomes happen, and the rejections come from many checks, not only the checksum
    assert stats.decoded > 100 and stats.value_errors > 2000
    assert n - stats.resigned > 200
    assert len(stats.reasons) >= 25, sorted(stats.reasons)
    deep = [r for r in stats.reasons if r.startswith("entropy-coded")]
    assert len(deep) >= 3, sorted(stats.reasons)
    checksum = sum(c for r, c in stats.reasons.items() if "checksum" in r)
    assert checksum < stats.value_errors / 2


def test_a_splice_that_rebuilds_a_seed_is_not_a_case(corpus):
    seeds, layouts, _ = corpus
    cases = [19915, 52311, 102082, 979162]  # seed-0 cases whose splice reproduced another seed exactly
    for index in cases:
        case = fuzz.make_case(seeds, layouts, index, seed=0)
        assert case.data not in seeds
        with pytest.raises(ValueError):
            codec.decode(case.data)


def test_unsigned_edits_are_rejected(corpus):
    seeds, layouts, max_numel = corpus
    unsigned = 0
    for index in range(3000):
        case = fuzz.make_case(seeds, layouts, index, seed=3)
        if case.resigned:
            continue
        unsigned += 1
        with pytest.raises(ValueError):
            codec.decode(case.data, max_numel=max_numel)
    assert unsigned > 200


def test_the_oracle_reports_what_it_should(corpus, monkeypatch):
    seeds, _, max_numel = corpus
    valid = seeds[len(seeds) // 2]
    assert fuzz.check_case(fuzz.Case(valid, True, 0), max_numel)[0] == "canonical"
    # a buffer that decodes without its checksum having been recomputed is a silent wrong result
    assert fuzz.check_case(fuzz.Case(valid, False, 0), max_numel)[0] == "silent"
    # a re-signed edit that still decodes is fine when it is self-consistent
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    data = bytearray(codec.encode(build_quantizer("learned", 8, dim=8)[0].encode(x)).data)
    data[-5] ^= 1  # the last code
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    assert fuzz.check_case(fuzz.Case(bytes(data), True, 0), max_numel)[0] == "canonical"
    # anything but ValueError is another exception
    monkeypatch.setattr(codec, "decode", lambda *a, **k: (_ for _ in ()).throw(MemoryError("boom")))
    outcome, detail = fuzz.check_case(fuzz.Case(valid, True, 0), max_numel)
    assert outcome == "other" and "MemoryError" in detail


def test_the_oracle_catches_a_payload_that_does_not_survive_re_encoding(corpus, monkeypatch):
    seeds, _, max_numel = corpus
    real_decode = codec.decode
    calls = []

    def decode_then_drift(buf, *args, **kwargs):  # the second decode differs from the first
        payload = real_decode(buf, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            data = payload.fields[0].data.clone().reshape(-1)
            data[0] = data[0] + 1 if data.dtype != torch.uint8 or data[0] == 0 else data[0] - 1
            payload = codec.Payload(payload.scheme, payload.bits, payload.shape,
                                    (codec.Field(data, payload.fields[0].bits), *payload.fields[1:]), payload.params)
        return payload

    monkeypatch.setattr(codec, "decode", decode_then_drift)
    outcome, detail = fuzz.check_case(fuzz.Case(seeds[0], True, 0), max_numel)
    assert outcome == "silent" and "differently" in detail


def test_driver_counts_a_worker_death_and_goes_on(corpus):
    seeds, _, max_numel = corpus
    subset = seeds[::25]
    lines = []
    stats = fuzz.drive(40, seed=0, batch=15, max_numel=max_numel, memory_mb=1024, log=lines.append,
                       progress_s=0.0, abort_at=22, seeds=subset)
    assert stats.deaths == 1 and any("died at case 22" in line for line in lines)
    assert stats.tried == 40  # the batch it died in is run again up to the death
    assert stats.value_errors + stats.decoded == 39 and stats.other == stats.silent == 0
    assert 0 < stats.start_rss_kb <= stats.peak_rss_kb
