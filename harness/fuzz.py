"""Structure-aware fuzzing of the wire codec with hostile bytes.

    python -m harness.fuzz N [--seed S] [--batch B] [--max-numel K] [--memory-mb M]

Seeds are valid buffers of every scheme, bit width and entropy mode (plus constant and
near-constant codes, whose entropy coding is nearly empty). Each case takes one seed and
applies one to three edits that know the layout: header bytes, shape dimensions and
parameters (alone, or with every count and size made consistent with them), field-table
entries, the total length, float side information, the frequency table and words of an
entropy-coded field, bytes inserted, deleted, truncated or spliced in from another seed. Most
cases then fix the total length and recompute the checksum, as a sender that means harm
would, so that the decoder's own checks are what stands in the way; the rest keep the old
checksum.

A case's outcome:
- rejected: `codec.decode` raised ValueError;
- decoded: it returned a payload that is self-consistent: it dequantizes, re-encoding it (in
  the buffer's entropy mode) gives a valid buffer, and decoding that gives the same payload
  bit for bit ("canonical" when the re-encoding is the very same bytes);
- silent wrong result: a buffer whose checksum was not recomputed decoded, or a decoded
  payload is not self-consistent;
- other exception: anything but ValueError from `describe`, `decode` or the checks after it;
- process death: the worker process died (an abort, a crash, the memory limit), counted by
  the driver, which starts a new worker after the case that killed it.

Cases run in batches in one worker process under an address-space limit (`--memory-mb` above
what it holds after start-up); `--max-numel` is the receiver's bound on a payload's elements
(what `codec.decode(max_numel=...)` is for). The report gives the worker's peak resident
memory against the largest seed's decoded size.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import re
import resource
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field

PREFIX_SIZE, HEAD_SIZE, ENTRY_SIZE, CRC_SIZE = 7, 5, 10, 4
PACKED, ENTROPY = 0, 1
U32_EDGES = (0, 1, 2, 3, 7, 8, 15, 16, 63, 64, 255, 256, 4095, 65535, 65536, 2**20, 2**24, 2**26, 2**26 + 1,
             2**28, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1)
U8_EDGES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 127, 128, 254, 255)


# --- seeds ------------------------------------------------------------------------------------

def seed_corpus() -> list[bytes]:
    """Valid buffers of every scheme, bit width and entropy mode, deduplicated."""
    import torch

    from sltestbed import codec
    from sltestbed.quantizers import SCHEMES, Field, Payload, build_quantizer, scheme_class

    gen = torch.Generator().manual_seed(0)

    def heavy(shape):
        return torch.randn(shape, generator=gen) * torch.exp(1.5 * torch.randn(shape, generator=gen))

    inputs = [torch.randn(1, generator=gen), torch.randn(3, 5, generator=gen), heavy((2, 3, 37)),
              heavy((4, 16, 16)), heavy((2, 3, 2, 3, 5))]
    seeds: dict[bytes, None] = {}
    for name in SCHEMES:
        bits_list = [None] if name in ("fp32", "fp16", "bf16") else list(scheme_class(name).bits_range)
        variants = [{}]
        if name == "uniform":
            variants = [{}, {"per_channel": True}]
        elif name == "nf":
            variants = [{}, {"block_size": 7}]
        for bits in bits_list:
            for options in variants:
                for x in inputs:
                    payload = build_quantizer(name, bits, dim=x.shape[-1], **options)[0].encode(x)
                    for entropy in (False, True):
                        seeds[codec.encode(payload, entropy=entropy).data] = None
    # nearly constant codes: the entropy-coded field is a table and a word or two, or none
    for bits in (1, 2, 8):
        for n, ones in ((3000, ()), (3000, (5,)), (20000, (0, 19999))):
            codes = torch.zeros(n, dtype=torch.uint8)
            codes[list(ones)] = 1
            payload = Payload("learned", bits, (n,), (Field(codes, bits),))
            seeds[codec.encode(payload, entropy=True).data] = None
    return list(seeds)


# --- layout -------------------------------------------------------------------------------------

@dataclass
class Layout:
    """Where each part of a (seed) buffer sits, by the documented wire format."""

    ndim: int
    nparams: int
    nfields: int
    bits: int
    shape_at: int
    params_at: int
    table_at: int
    entries: list[tuple[int, int, int, int]]
    data_at: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, buf: bytes) -> Layout:
        _scheme, bits, ndim, nparams, nfields = struct.unpack_from("<5B", buf, PREFIX_SIZE)
        shape_at = PREFIX_SIZE + HEAD_SIZE
        params_at = shape_at + 4 * ndim
        table_at = params_at + 4 * nparams
        entries = [struct.unpack_from("<BBII", buf, table_at + i * ENTRY_SIZE) for i in range(nfields)]
        layout = cls(ndim, nparams, nfields, bits, shape_at, params_at, table_at, entries)
        pos = table_at + ENTRY_SIZE * nfields
        for entry in entries:
            layout.data_at.append(pos)
            pos += entry[3]
        return layout


def resign(buf: bytearray, fix_length: bool = True) -> None:
    """Set the total length to the buffer's and recompute the checksum, in place."""
    if len(buf) < PREFIX_SIZE + CRC_SIZE:
        return
    if fix_length:
        struct.pack_into("<I", buf, 3, len(buf))
    struct.pack_into("<I", buf, len(buf) - CRC_SIZE, zlib.crc32(bytes(buf[:-CRC_SIZE])))


# --- mutations ------------------------------------------------------------------------------------

def _u32(rng: random.Random, old: int | None = None) -> int:
    r = rng.random()
    if old is not None and r < 0.3:
        return max(0, min(2**32 - 1, old + rng.choice((-2, -1, 1, 2, old, -old // 2))))
    if r < 0.8:
        return rng.choice(U32_EDGES)
    return rng.getrandbits(32)


def _set_u32(buf: bytearray, at: int, value: int) -> None:
    if 0 <= at and at + 4 <= len(buf):
        struct.pack_into("<I", buf, at, value)


def _entry_at(lay: Layout, i: int) -> int:
    return lay.table_at + i * ENTRY_SIZE


def _resize_field(buf: bytearray, lay: Layout, i: int, new_nbytes: int, rng: random.Random) -> bytearray:
    """Grow or shrink field i's data to new_nbytes (random or zero bytes), fixing its entry."""
    start, old = lay.data_at[i], lay.entries[i][3]
    if new_nbytes > old:
        extra = bytes(new_nbytes - old) if rng.random() < 0.5 else rng.randbytes(new_nbytes - old)
        buf = buf[: start + old] + extra + buf[start + old:]
    else:
        buf = buf[: start + new_nbytes] + buf[start + old:]
    _set_u32(buf, _entry_at(lay, i) + 6, new_nbytes)
    return buf


def m_header_byte(buf, lay, rng, seeds):
    at = rng.choice((2, PREFIX_SIZE, PREFIX_SIZE + 1, PREFIX_SIZE + 2, PREFIX_SIZE + 3, PREFIX_SIZE + 4, 0, 1))
    old = buf[at]
    buf[at] = rng.choice((old + 1, old - 1, *U8_EDGES, rng.getrandbits(8))) & 0xFF
    return buf


def m_dim(buf, lay, rng, seeds):
    if lay.ndim:
        at = lay.shape_at + 4 * rng.randrange(lay.ndim)
        _set_u32(buf, at, _u32(rng, struct.unpack_from("<I", buf, at)[0]))
    return buf


def m_shape_consistent(buf, lay, rng, seeds):
    """A new shape with every count (and, where small enough, every size) to match it."""
    from sltestbed.quantizers import SCHEMES, scheme_class

    if not lay.ndim or buf[PREFIX_SIZE] >= len(SCHEMES):
        return buf
    n = rng.choice((1, 2, 3, 7, 63, 64, 65, 1000, 2**16, 2**20, 2**26, 2**26 + 1, 2**31, 2**32 - 1,
                    rng.randrange(1, 5000)))
    dims = [1] * lay.ndim
    dims[rng.randrange(lay.ndim)] = n
    params = struct.unpack_from(f"<{lay.nparams}I", buf, lay.params_at)
    try:
        specs = scheme_class(SCHEMES[buf[PREFIX_SIZE]]).wire_fields(buf[PREFIX_SIZE + 1], tuple(dims), params)
    except ValueError:
        return buf
    struct.pack_into(f"<{lay.ndim}I", buf, lay.shape_at, *dims)
    resize = rng.random() < 0.6
    for i in reversed(range(min(len(specs), lay.nfields))):
        spec, (kind, fbits, _count, nbytes) = specs[i], lay.entries[i]
        if spec.numel >= 2**32:
            continue
        _set_u32(buf, _entry_at(lay, i) + 2, spec.numel)
        size = math.ceil(spec.numel * fbits / 8)
        if kind == ENTROPY:
            size = nbytes  # coded words hold an unknown number of codes: keep them
        if resize and size <= 1 << 16:
            buf = _resize_field(buf, lay, i, size, rng)
    return buf


def m_param(buf, lay, rng, seeds):
    if lay.nparams:
        at = lay.params_at + 4 * rng.randrange(lay.nparams)
        _set_u32(buf, at, _u32(rng, struct.unpack_from("<I", buf, at)[0]))
    return buf


def m_entry(buf, lay, rng, seeds):
    i = rng.randrange(lay.nfields)
    at = _entry_at(lay, i)
    what = rng.randrange(4)
    if what == 0:
        buf[at] = rng.choice((0, 1, 2, 3, 4, 5, 255))
    elif what == 1:
        buf[at + 1] = rng.choice((0, 1, 2, 3, 4, 7, 8, 9, 16, 32, 33, 255))
    elif what == 2:
        _set_u32(buf, at + 2, _u32(rng, lay.entries[i][2]))
    else:
        _set_u32(buf, at + 6, _u32(rng, lay.entries[i][3]))
    return buf


def m_entry_consistent(buf, lay, rng, seeds):
    """A field's count and bits changed together with its size (and its data resized)."""
    i = rng.randrange(lay.nfields)
    kind, fbits, count, nbytes = lay.entries[i]
    if rng.random() < 0.3:
        fbits = rng.choice((1, 2, 3, 4, 8, 16, 32))
        buf[_entry_at(lay, i) + 1] = fbits
    count = max(0, count + rng.choice((-8, -1, 1, 8, count, -count // 2)))
    _set_u32(buf, _entry_at(lay, i) + 2, count)
    size = nbytes if kind == ENTROPY else math.ceil(count * fbits / 8)
    return _resize_field(buf, lay, i, min(size, 1 << 16), rng)


def m_total(buf, lay, rng, seeds):
    _set_u32(buf, 3, _u32(rng, len(buf)))
    return buf


def m_flip(buf, lay, rng, seeds):
    region = rng.random()
    if region < 0.6 and lay.nfields and len(buf) > lay.data_at[0] + CRC_SIZE:
        at = rng.randrange(lay.data_at[0], len(buf) - CRC_SIZE)
    elif region < 0.9:
        at = rng.randrange(min(len(buf), lay.table_at + ENTRY_SIZE * lay.nfields))
    else:
        at = rng.randrange(len(buf))
    for _ in range(rng.choice((1, 1, 1, 2, 8))):
        j = min(len(buf) - 1, at + rng.randrange(4))
        buf[j] ^= 1 << rng.randrange(8)
    return buf


def m_byte(buf, lay, rng, seeds):
    at = rng.randrange(len(buf))
    buf[at] = rng.choice((0, 0xFF, 0x7F, 0x80, 1, rng.getrandbits(8)))
    return buf


def m_float(buf, lay, rng, seeds):
    """A float in a raw field set to a special value."""
    floats = [(i, e) for i, e in enumerate(lay.entries) if e[0] in (2, 3, 4) and e[3] >= 2]
    if not floats:
        return buf
    i, (kind, _bits, _count, nbytes) = rng.choice(floats)
    width = 4 if kind == 4 else 2
    at = lay.data_at[i] + width * rng.randrange(nbytes // width)
    value = rng.choice((0.0, -0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 3e38, -3e38))
    if width == 4:
        struct.pack_into("<f", buf, at, value)
    else:
        struct.pack_into("<e", buf, at, value if math.isnan(value) or abs(value) < 65504 else math.copysign(math.inf, value))
    return buf


def m_entropy(buf, lay, rng, seeds):
    """Edits inside an entropy-coded field: table entries, words, the word count."""
    coded = [i for i, e in enumerate(lay.entries) if e[0] == ENTROPY]
    if not coded:
        return m_flip(buf, lay, rng, seeds)
    i = rng.choice(coded)
    _kind, fbits, _count, nbytes = lay.entries[i]
    start = lay.data_at[i]
    table = 2 * 2 ** min(fbits, 8)
    nwords = max(0, (nbytes - table) // 4)
    what = rng.randrange(7)
    if what == 0:  # a table entry
        at = start + 2 * rng.randrange(2 ** min(fbits, 8))
        struct.pack_into("<H", buf, at, rng.choice((0, 1, 2, 65534, 65535, rng.getrandbits(16))))
    elif what == 1 and nwords:  # flip bits in a word
        at = start + table + 4 * rng.randrange(nwords) + rng.randrange(4)
        buf[at] ^= 1 << rng.randrange(8)
    elif what == 2 and nwords:  # set a word
        at = start + table + 4 * rng.randrange(nwords)
        struct.pack_into("<I", buf, at, rng.choice((0, 1, 2**31, 2**32 - 1, rng.getrandbits(32))))
    elif what == 3 and nwords:  # drop words
        buf = _resize_field(buf, lay, i, nbytes - 4 * rng.randint(1, min(nwords, 3)), rng)
    elif what == 4:  # append words
        extra = 4 * rng.randint(1, 3)
        buf = _resize_field(buf, lay, i, nbytes + extra, rng)
        at = start + nbytes + extra - 4
        if at + 4 <= len(buf):
            struct.pack_into("<I", buf, at, rng.getrandbits(32) | 1)
    elif what == 5 and nwords > 1:  # swap two words
        a, b = (start + table + 4 * rng.randrange(nwords) for _ in range(2))
        buf[a:a + 4], buf[b:b + 4] = buf[b:b + 4], buf[a:a + 4]
    else:  # the count of codes
        _set_u32(buf, _entry_at(lay, i) + 2, _u32(rng, lay.entries[i][2]))
    return buf


def m_insert_delete(buf, lay, rng, seeds):
    at = rng.randrange(len(buf) + 1)
    k = rng.choice((1, 1, 2, 4, 10, 100))
    if rng.random() < 0.5:
        buf = buf[:at] + rng.randbytes(k) + buf[at:]
    else:
        buf = buf[:at] + buf[at + k:]
    return buf


def m_truncate_extend(buf, lay, rng, seeds):
    if rng.random() < 0.5:
        return buf[: rng.randrange(len(buf))]
    return buf + (bytes(rng.choice((1, 4, 16))) if rng.random() < 0.5 else rng.randbytes(rng.choice((1, 4, 16))))


def m_splice(buf, lay, rng, seeds):
    other = rng.choice(seeds)
    cut = rng.randrange(len(buf))
    cut2 = rng.randrange(len(other))
    return buf[:cut] + other[cut2:]


MUTATIONS = (
    (m_header_byte, 3), (m_dim, 3), (m_shape_consistent, 4), (m_param, 2), (m_entry, 4),
    (m_entry_consistent, 3), (m_total, 1), (m_flip, 5), (m_byte, 2), (m_float, 2), (m_entropy, 6),
    (m_insert_delete, 2), (m_truncate_extend, 2), (m_splice, 1),
)
_OPS = [op for op, _ in MUTATIONS]
_WEIGHTS = [w for _, w in MUTATIONS]


@dataclass(frozen=True)
class Case:
    data: bytes
    resigned: bool  # checksum recomputed after the edits
    seed_index: int


def make_case(seeds: list[bytes], layouts: list[Layout], index: int, seed: int = 0,
              known: frozenset[bytes] | None = None) -> Case:
    """The index-th case of a run: deterministic in (seed, index). Never a seed itself (a
    splice can rebuild one exactly); `known` is frozenset(seeds), passed to save the work."""
    rng = random.Random(f"{seed}/{index}")
    ops = rng.choices(_OPS, _WEIGHTS, k=rng.choice((1, 1, 2, 3)))
    coded = [i for i, lay in enumerate(layouts) if any(e[0] == ENTROPY for e in lay.entries)]
    k = rng.choice(coded) if m_entropy in ops and coded else rng.randrange(len(seeds))
    original = seeds[k]
    buf = bytearray(original)
    for i, op in enumerate(ops):
        if len(buf) <= PREFIX_SIZE + HEAD_SIZE + CRC_SIZE:
            break
        try:  # a later edit reads the layout the earlier ones left, which may no longer parse
            lay = layouts[k] if i == 0 else Layout.parse(bytes(buf))
            buf = bytearray(op(bytearray(buf), lay, rng, seeds))
        except (IndexError, struct.error, ValueError):
            continue
    resigned = rng.random() < 0.85
    if resigned:
        resign(buf, fix_length=rng.random() < 0.95)
    elif rng.random() < 0.5 and len(buf) >= PREFIX_SIZE:
        struct.pack_into("<I", buf, 3, len(buf))  # a consistent length, the old checksum
    known = frozenset(seeds) if known is None else known
    while bytes(buf) in known:  # edits that left a valid buffer are no test: flip a data bit
        buf[rng.randrange(PREFIX_SIZE + HEAD_SIZE, len(buf))] ^= 1 << rng.randrange(8)
        if resigned:
            resign(buf)
    return Case(bytes(buf), resigned, k)


# --- oracle -------------------------------------------------------------------------------------

@dataclass
class Stats:
    tried: int = 0
    resigned: int = 0
    value_errors: int = 0
    decoded: int = 0
    canonical: int = 0
    silent: int = 0
    other: int = 0
    deaths: int = 0
    reasons: dict = field(default_factory=dict)  # ValueError message heads, counted
    examples: list = field(default_factory=list)  # (kind, case index, detail) of failures
    slowest_s: float = 0.0
    slowest_case: int = -1
    peak_rss_kb: int = 0
    start_rss_kb: int = 0

    def add(self, other: Stats) -> None:
        for name in ("tried", "resigned", "value_errors", "decoded", "canonical", "silent", "other", "deaths"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])
        if other.slowest_s > self.slowest_s:
            self.slowest_s, self.slowest_case = other.slowest_s, other.slowest_case
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)
        self.start_rss_kb = max(self.start_rss_kb, other.start_rss_kb)


def _reason(message: str) -> str:
    """A ValueError message without its numbers and names: which check it was."""
    message = re.sub(r"field \d+ of a '\w+' payload of shape \([^)]*\)", "field", message)
    message = re.sub(r"'\w+'|b'[^']*'|\([^)]*\)", "", message)
    words = [w for w in message.replace(":", " ").split() if not any(c.isdigit() for c in w)]
    return " ".join(words[:8])


def _same_payload(a, b) -> bool:
    import torch

    if (a.scheme, a.bits, tuple(a.shape), tuple(a.params), len(a.fields)) != \
            (b.scheme, b.bits, tuple(b.shape), tuple(b.params), len(b.fields)):
        return False
    for fa, fb in zip(a.fields, b.fields):
        if fa.bits != fb.bits or fa.data.dtype != fb.data.dtype or fa.data.numel() != fb.data.numel():
            return False
        ra = fa.data.reshape(-1).contiguous().view(torch.uint8)
        rb = fb.data.reshape(-1).contiguous().view(torch.uint8)
        if not torch.equal(ra, rb):  # bit for bit: NaN payloads and -0.0 included
            return False
    return True


def check_case(case: Case, max_numel: int | None) -> tuple[str, str]:
    """(outcome, detail): outcome is 'rejected', 'decoded', 'canonical', 'silent' or 'other'."""
    import torch

    from sltestbed import codec
    from sltestbed.quantizers import dequantize

    try:
        codec.describe(case.data)
    except ValueError:
        pass
    except Exception as exc:  # noqa: BLE001 - counting, not handling
        return "other", f"describe: {type(exc).__name__}: {exc}"
    try:
        payload = codec.decode(case.data, max_numel=max_numel)
    except ValueError as exc:
        return "rejected", str(exc)
    except Exception as exc:  # noqa: BLE001
        return "other", f"decode: {type(exc).__name__}: {exc}"
    if not case.resigned:
        return "silent", "decoded although its checksum was not recomputed"
    try:
        values = dequantize(payload)
        entropy = any(e[0] == ENTROPY for e in Layout.parse(case.data).entries)
        again = codec.encode(payload, entropy=entropy)
        back = codec.decode(again.data, max_numel=max_numel)
        if not _same_payload(back, payload):
            return "silent", "re-encoded payload decodes differently"
        same_values = torch.equal(dequantize(back).view(torch.int32), values.contiguous().view(torch.int32))
        if values.shape != tuple(payload.shape) or not same_values:
            return "silent", "re-encoded payload dequantizes differently"
    except ValueError as exc:
        return "silent", f"decoded payload is not self-consistent: {exc}"
    except Exception as exc:  # noqa: BLE001
        return "other", f"after decode: {type(exc).__name__}: {exc}"
    return ("canonical" if again.data == case.data else "decoded"), ""


def run_cases(seeds: list[bytes], start: int, count: int, seed: int = 0, max_numel: int | None = None,
              progress=None, layouts: list[Layout] | None = None) -> Stats:
    """Cases start..start+count-1 in this process; `progress(index)` is called before each."""
    layouts = layouts or [Layout.parse(s) for s in seeds]
    known = frozenset(seeds)
    stats = Stats()
    for index in range(start, start + count):
        if progress is not None:
            progress(index)
        case = make_case(seeds, layouts, index, seed, known)
        t0 = time.perf_counter()
        outcome, detail = check_case(case, max_numel)
        elapsed = time.perf_counter() - t0
        if elapsed > stats.slowest_s:
            stats.slowest_s, stats.slowest_case = elapsed, index
        stats.tried += 1
        stats.resigned += case.resigned
        if outcome == "rejected":
            stats.value_errors += 1
            reason = _reason(detail)
            stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        elif outcome in ("decoded", "canonical"):
            stats.decoded += 1
            stats.canonical += outcome == "canonical"
        else:
            setattr(stats, outcome, getattr(stats, outcome) + 1)
            if len(stats.examples) < 20:
                stats.examples.append((outcome, index, detail[:300]))
    stats.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return stats


def decoded_size(buf: bytes) -> int:
    """Bytes a receiver holds for a buffer: its decoded fields and float32 values."""
    from sltestbed import codec

    payload = codec.decode(buf, max_numel=None)
    return sum(f.data.numel() * f.data.element_size() for f in payload.fields) + 4 * math.prod(payload.shape)


# --- the driver: a worker process under a memory limit -------------------------------------------

def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(conn, seeds, seed, max_numel, memory_mb, current, abort_at):
    import os

    import torch

    from sltestbed import codec  # noqa: F401 - imported before the limit, like a receiver's

    torch.set_num_threads(1)
    layouts = [Layout.parse(s) for s in seeds]
    run_cases(seeds, 0, 3, seed, max_numel, layouts=layouts)  # warm up the code paths
    if memory_mb:
        limit = _vm_bytes() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def progress(index):
        current.value = index
        if index == abort_at:
            os.abort()

    while True:
        task = conn.recv()
        if task is None:
            return
        start, count = task
        stats = run_cases(seeds, start, count, seed, max_numel, progress, layouts)
        stats.start_rss_kb = start_rss
        conn.send(stats)


def drive(n: int, seed: int = 0, batch: int = 2000, max_numel: int | None = None, memory_mb: int = 1024,
          log=print, progress_s: float = 30.0, abort_at: int | None = None,
          seeds: list[bytes] | None = None) -> Stats:
    """Run cases 0..n-1 in a worker process, restarting it after a death. `abort_at` makes
    the worker abort at that case (to check that deaths are counted)."""
    seeds = seeds or seed_corpus()
    ctx = mp.get_context("spawn")
    current = ctx.Value("q", -1)
    total = Stats()
    todo = [(start, min(batch, n - start)) for start in range(0, n, batch)]  # (first case, count)
    done, worker, conn = 0, None, None
    t0 = last_log = time.monotonic()
    try:
        while todo:
            start, count = todo.pop(0)
            if worker is None:
                conn, child = ctx.Pipe()
                worker = ctx.Process(target=_worker, args=(child, seeds, seed, max_numel, memory_mb, current, abort_at),
                                     daemon=True)
                worker.start()
                child.close()
            current.value = -1
            conn.send((start, count))
            try:
                stats = conn.recv()
            except (EOFError, ConnectionError):
                worker.join()
                died_at = current.value
                if not start <= died_at < start + count:  # died before its first case
                    raise RuntimeError(f"the fuzzing worker died before running a case (exit code {worker.exitcode})")
                total.deaths += 1
                total.tried += 1
                done += 1
                total.examples.append(("death", died_at, f"worker exit code {worker.exitcode}"))
                log(f"  worker died at case {died_at} (exit code {worker.exitcode}); running the rest of its batch "
                    f"in a new one")
                rest = [(start, died_at - start), (died_at + 1, start + count - died_at - 1)]
                todo[:0] = [r for r in rest if r[1] > 0]
                worker, conn = None, None
                continue
            total.add(stats)
            done += count
            now = time.monotonic()
            if now - last_log >= progress_s or not todo:
                last_log = now
                log(f"  {done:,}/{n:,} cases ({done / max(now - t0, 1e-9):,.0f}/s): {total.value_errors:,} ValueError, "
                    f"{total.decoded:,} decoded, {total.silent} silent, {total.other} other, {total.deaths} deaths, "
                    f"peak RSS {total.peak_rss_kb / 1024:.0f} MiB")
    finally:
        if worker is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Structure-aware fuzzing of the wire codec.")
    parser.add_argument("n", type=int, help="cases to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=2000, help="cases per batch sent to the worker")
    parser.add_argument("--max-numel", type=int, default=None,
                        help="the receiver's bound on elements (default: twice the largest seed's)")
    parser.add_argument("--memory-mb", type=int, default=1024,
                        help="address space the worker may add after start-up (0: no limit)")
    parser.add_argument("--progress-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1:
        parser.error("n and --batch must be >= 1")
    started = time.monotonic()
    seeds = seed_corpus()
    sizes = [decoded_size(s) for s in seeds]
    from sltestbed import codec

    largest = max(range(len(seeds)), key=sizes.__getitem__)
    numels = [math.prod(codec.decode(s).shape) for s in seeds]
    max_numel = args.max_numel if args.max_numel is not None else 2 * max(numels)
    print(f"fuzzing the codec: {args.n:,} cases, seed {args.seed}, {len(seeds)} seed buffers "
          f"({min(map(len, seeds))}-{max(map(len, seeds))} bytes), max_numel {max_numel:,}, "
          f"worker memory limit +{args.memory_mb} MiB", flush=True)
    stats = drive(args.n, args.seed, args.batch, max_numel, args.memory_mb, log=lambda s: print(s, flush=True),
                  progress_s=args.progress_seconds, seeds=seeds)
    wall = time.monotonic() - started
    rss_mib, start_mib = stats.peak_rss_kb / 1024, stats.start_rss_kb / 1024
    print(f"cases tried:                      {stats.tried:,} ({stats.resigned:,} with the checksum recomputed)")
    print(f"ValueErrors:                      {stats.value_errors:,}")
    print(f"decoded (self-consistent):        {stats.decoded:,} (re-encoded to the same bytes: {stats.canonical:,})")
    print(f"silent wrong results:             {stats.silent:,}")
    print(f"other exceptions:                 {stats.other:,}")
    print(f"process deaths:                   {stats.deaths:,}")
    print(f"peak memory (worker RSS):         {rss_mib:.1f} MiB; {start_mib:.1f} MiB after start-up "
          f"(interpreter, torch, seeds), so {rss_mib - start_mib:.1f} MiB for the cases")
    print(f"largest valid buffer:             {len(seeds[largest]):,} bytes, decoded size "
          f"{sizes[largest] / 2**20:.3f} MiB ({sizes[largest]:,} bytes)")
    print(f"slowest case:                     {stats.slowest_s * 1e3:.1f} ms (case {stats.slowest_case})")
    print(f"distinct rejection reasons:       {len(stats.reasons)}")
    for reason, count in sorted(stats.reasons.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {count:>9,}  {reason}")
    for kind, index, detail in stats.examples[:20]:
        print(f"  {kind} at case {index}: {detail}")
    print(f"wall time:                        {wall:.0f} s")
    return 0 if stats.silent == stats.other == stats.deaths == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
