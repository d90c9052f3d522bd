"""Codec benchmark: what it costs to put a feature tensor on the wire and take it off.

    python -m sltestbed.bench [--numel 4194304] [--device cpu|cuda] [--json PATH]

For each scheme and bit width, on one float32 tensor of `--numel` elements (shaped
8 x S x 1024 like a batch of token features), each as a ratio to `x.clone()` of the same
tensor timed in the same run:
- encode+pack: scaling, rounding and bit packing, to the packed code tensor;
- unpack+decode: packed codes back to float32 values;
- wire encode / wire decode: the same plus the header, the checksum and the copy to and from
  `bytes` (what a message carries).
Each time is the fastest of `--repeats` runs (the least disturbed on a shared machine).
The learned quantizer runs without its projection: that is model compute, not codec work.
Then the entropy-coded mode: bits per element against the empirical entropy of the codes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from . import bitpack, codec
from .entropy import code_entropy
from .quantizers import Field, Payload, build_quantizer, dequantize

SCHEMES = [("learned", range(1, 9)), ("uniform", range(1, 9)), ("nf", range(2, 9)), ("fsq", range(2, 9)),
           ("topk", (1, 2, 4, 8)), ("fp16", (None,)), ("bf16", (None,)), ("fp32", (None,))]


def timer(device: torch.device, repeats: int):
    """fastest_seconds(fn): the fastest of `repeats` calls after a warm-up, synchronised on CUDA."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def fastest_seconds(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    return fastest_seconds


def _pack(payload):
    """Each field as it goes on the wire: codes bit-packed, floats as they are."""
    return [bitpack.pack(f.data, f.bits) if f.is_codes else f.data for f in payload.fields]


def _unpack(payload, packed):
    fields = tuple(Field(bitpack.unpack(p, f.bits, f.numel), f.bits) if f.is_codes else Field(p, f.bits)
                   for f, p in zip(payload.fields, packed))
    return Payload(payload.scheme, payload.bits, payload.shape, fields, payload.params)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(numel: int = 4 * 1024 * 1024, device: str = "cpu", repeats: int = 7, seed: int = 0, log=print) -> dict:
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    d = 1024
    x = torch.randn(8, max(1, numel // (8 * d)), d, generator=gen).to(dev)
    n = x.numel()
    time_it = timer(dev, repeats)
    for _ in range(20):  # let the allocator settle, so the first row's clone is not the slow one
        x.clone()
    log(f"benchmark on {describe_device(dev)}: {n:,} float32 elements, fastest of {repeats} runs; ratios to x.clone()")
    rows = []
    for name, bit_list in SCHEMES:
        for bits in bit_list:
            options = {"projection": False} if name == "learned" else {}
            enc = build_quantizer(name, bits, dim=d, **options)[0].to(dev)
            payload = enc.encode(x)
            wire = codec.encode(payload)
            assert torch.equal(dequantize(codec.decode(wire.data, device=dev)), dequantize(payload))
            packed = _pack(payload)
            clone_s = time_it(lambda: x.clone())
            encode_s = time_it(lambda: _pack(enc.encode(x)))
            decode_s = time_it(lambda: dequantize(_unpack(payload, packed)))
            wire_encode_s = time_it(lambda: codec.encode(enc.encode(x)).data)
            wire_decode_s = time_it(lambda: dequantize(codec.decode(wire.data, device=dev)))
            row = {
                "scheme": name, "bits": payload.bits,
                "encode_ratio": encode_s / clone_s, "decode_ratio": decode_s / clone_s,
                "wire_encode_ratio": wire_encode_s / clone_s, "wire_decode_ratio": wire_decode_s / clone_s,
                "payload_bytes": wire.nbytes, "ideal_bytes": payload.ideal_bytes,
                "code_bytes": wire.field_bytes[0], "header_bytes": wire.header_bytes,
                "clone_ms": clone_s * 1e3, "encode_ms": encode_s * 1e3, "decode_ms": decode_s * 1e3,
                "wire_encode_ms": wire_encode_s * 1e3, "wire_decode_ms": wire_decode_s * 1e3,
            }
            rows.append(row)
            log(f"  {name:8s} b={payload.bits:2d}  clone {row['clone_ms']:5.2f} ms | encode+pack {row['encode_ratio']:6.2f}x"
                f"  unpack+decode {row['decode_ratio']:6.2f}x | wire {row['wire_encode_ratio']:6.2f}x / "
                f"{row['wire_decode_ratio']:6.2f}x | bytes {wire.nbytes:>10,} (ideal {payload.ideal_bytes:,}, "
                f"header {wire.header_bytes})")

    coded = []
    log("entropy-coded mode (learned quantizer codes of the same tensor):")
    for bits in range(1, 9):
        enc, _ = build_quantizer("learned", bits, projection=False)
        payload = enc.to(dev).encode(x)
        wire = codec.encode(payload, entropy=True)
        entropy = code_entropy(payload.fields[0].data, 2**bits)
        row = {"bits": bits, "bits_per_element": wire.field_bytes[0] * 8 / n, "entropy_bits": entropy,
               "fixed_bits_per_element": bits, "table_bits_per_element": 16 * 2**bits / n}
        coded.append(row)
        log(f"  b={bits}  coded {row['bits_per_element']:.4f} bit/element  (empirical entropy {entropy:.4f}, "
            f"fixed width {bits})")
    return {"codec": rows, "entropy_coding": coded, "device": describe_device(dev), "numel": n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if args.numel < 8 * 1024:
        parser.error("--numel must be at least 8192")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    result = run(args.numel, args.device, args.repeats)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
