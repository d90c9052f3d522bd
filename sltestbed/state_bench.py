"""Node-state benchmark: what a client keeps between messages, and what saving and restoring
it costs per message, against the model's size.

    python -m sltestbed.state_bench [--presets tiny wide large] [--repeats 5] [--json PATH]

A Flower SuperNode's ClientApp saves its role's state after every message that changed it
and restores it where another worker serves the node next. Per preset, after one training
step (so the optimizer has its state), for the client part at the connector cut:
- what trains: every client module ("all"), the run's default train-modules ("default":
  connector, quantizers and the input embeddings), or LoRA on the language model with the
  default modules ("lora": the embeddings are then frozen);
- part MB: the client part's weights; state MB: the saved node state (`ClientRole.state_bytes`:
  what trains, its AdamW moments, the batch cursor); whole-part MB: the same with every weight
  of the part, as it was saved before the state was bounded by what trains;
- save ms / restore ms: `state_bytes()` and `load_state_bytes()` into a fresh role (the
  fastest of `--repeats`), and the training step's own milliseconds beside them, with the
  ratio of save + restore to the step.
Figures are whole-tensor timings on this machine's CPU (torch's default threads).
"""

from __future__ import annotations

import argparse
import io
import json

import torch

from .bench import timer
from .data import VQACollator, build_tokenizer, make_digits_vqa
from .model import PRESETS, TinyLlava, preset
from .roles import ClientRole, ServerRole
from .trainer import OptimConfig, TensorData

TRAINS = {"all": ("vision", "connector", "quantizers", "lm"), "default": ("connector", "quantizers", "lm"),
          "lora": ("connector", "quantizers", "lm")}


def _role(name: str, trains: str, data: TensorData, vocab: int) -> ClientRole:
    torch.manual_seed(0)
    lora = {"lora_rank": 8} if trains == "lora" else {}
    model = TinyLlava(preset(name, vocab_size=vocab, quantizer="learned", bits=2, **lora))
    return ClientRole(model, 0, data, batch_size=16, seed=0, optim=OptimConfig(1e-3, 100), trainable=TRAINS[trains])


def measure(name: str, trains: str, repeats: int) -> dict:
    ds = make_digits_vqa(image_size=PRESETS[name]["image_size"], questions_per_image=1).select(range(64))
    data = TensorData(ds, VQACollator(build_tokenizer([ds])))
    vocab = int(data.labels.max()) + 16
    client = _role(name, trains, data, vocab)
    torch.manual_seed(0)
    server = ServerRole(TinyLlava(preset(name, vocab_size=vocab, quantizer="learned", bits=2)), 0,
                        optim=OptimConfig(1e-3, 100))

    def step():
        acts, labels = client.forward()
        server.forward([acts])
        _, grads = server.backward_from_labels([labels])
        client.backward(grads[0])

    fastest = timer(torch.device("cpu"), repeats)
    step_seconds = fastest(step)
    saved = client.state_bytes()
    fresh = _role(name, trains, data, vocab)
    save = fastest(client.state_bytes)
    restore = fastest(lambda: fresh.load_state_bytes(saved))
    whole = io.BytesIO()
    torch.save({"part": client.part_state(), "updates": client.updates.state_dict()}, whole)
    part_bytes = sum(v.numel() * v.element_size() for v in client.part.state_dict().values())
    return {"preset": name, "trains": trains, "part_mb": part_bytes / 1e6, "state_mb": len(saved) / 1e6,
            "whole_part_state_mb": len(whole.getvalue()) / 1e6, "save_ms": save * 1e3, "restore_ms": restore * 1e3,
            "step_ms": step_seconds * 1e3, "state_to_step": (save + restore) / step_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sltestbed.state_bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--presets", nargs="+", default=["tiny", "wide", "large"], choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    rows = []
    print(f"{'preset':7} {'trains':8} {'part MB':>9} {'state MB':>9} {'whole-part MB':>13} {'save ms':>8} "
          f"{'restore ms':>10} {'step ms':>8} {'(save+restore)/step':>20}", flush=True)
    for name in args.presets:
        for trains in TRAINS:
            r = measure(name, trains, args.repeats)
            rows.append(r)
            print(f"{r['preset']:7} {r['trains']:8} {r['part_mb']:9.3f} {r['state_mb']:9.3f} "
                  f"{r['whole_part_state_mb']:13.3f} {r['save_ms']:8.2f} {r['restore_ms']:10.2f} {r['step_ms']:8.2f} "
                  f"{r['state_to_step']:20.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
