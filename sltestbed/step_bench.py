"""Split-versus-unsplit step benchmark: what the cut itself costs a training step, with no
network in between.

    python -m sltestbed.step_bench [--presets tiny wide large] [--device auto] [--precision fp32]
                                   [--quantizer learned] [--bits 2] [--batch 16] [--repeats 10]

Per preset, on one batch of digits-VQA at the preset's image size, side by side in one run:
- unsplit: the whole model's forward, cross-entropy, backward and AdamW step (`TinyLlava`);
- split: the same step as two roles in one process (`roles.ClientRole`, `roles.ServerRole`):
  the client part's forward and quantization, the payloads dequantized by the server, its
  forward, backward and step, the cut gradients sent back as payloads, the client's backward
  and step. What the cut adds is the quantizers, the payloads and two optimizers.
Each figure is the fastest of `--repeats` steps after one warm-up (synchronised on CUDA), and
the ratio split / unsplit.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from .bench import timer
from .compute import PRECISIONS, Compute
from .data import VQACollator, build_tokenizer, make_digits_vqa
from .model import PRESETS, TinyLlava, preset
from .roles import ClientRole, ServerRole
from .trainer import OptimConfig, TensorData


def measure(name: str, compute: Compute, quantizer: str, bits: int | None, batch: int, repeats: int) -> dict:
    ds = make_digits_vqa(image_size=PRESETS[name]["image_size"], questions_per_image=1).select(range(max(batch, 64)))
    data = TensorData(ds, VQACollator(build_tokenizer([ds])))
    vocab = int(data.labels.max()) + 16

    def model(**quant):
        torch.manual_seed(0)
        return TinyLlava(preset(name, vocab_size=vocab, **quant))

    whole = model().to(compute.device)
    optimizer = torch.optim.AdamW(whole.parameters(), lr=1e-4)
    rows = torch.arange(batch)
    b = {k: v.to(compute.device) if isinstance(v, torch.Tensor) else v for k, v in data.batch(rows).items()}

    def unsplit():
        whole.train()
        with compute.autocast():
            logits = whole(b["pixel_values"], b["input_ids"], b["lengths"])
        loss = nn.functional.cross_entropy(logits.float(), b["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    quant = {"quantizer": quantizer, "bits": bits}
    optim = OptimConfig(1e-4, 10_000)
    client = ClientRole(model(**quant), 0, data, batch_size=batch, seed=0, optim=optim, compute=compute)
    server = ServerRole(model(**quant), 0, optim=optim, compute=compute)

    def split():
        acts, labels = client.forward()
        server.forward([acts])
        _, grads = server.backward_from_labels([labels])
        client.backward(grads[0])

    fastest = timer(compute.device, repeats)
    unsplit_s, split_s = fastest(unsplit), fastest(split)
    return {"preset": name, "device": str(compute.device), "precision": compute.precision, "batch": batch,
            "unsplit_ms": unsplit_s * 1e3, "split_ms": split_s * 1e3, "ratio": split_s / unsplit_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sltestbed.step_bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--presets", nargs="+", default=["tiny", "wide", "large"], choices=sorted(PRESETS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<index>")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--quantizer", default="learned")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    try:
        compute = Compute.of(args.device, args.precision)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{'preset':7} {'device':8} {'precision':9} {'batch':>5} {'unsplit ms':>10} {'split ms':>9} {'split/unsplit':>13}",
          flush=True)
    for name in args.presets:
        r = measure(name, compute, args.quantizer, args.bits, args.batch, args.repeats)
        print(f"{r['preset']:7} {r['device']:8} {r['precision']:9} {r['batch']:5d} {r['unsplit_ms']:10.2f} "
              f"{r['split_ms']:9.2f} {r['ratio']:13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
