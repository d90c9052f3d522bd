"""Cut-layer profile: for each candidate cut, what the client holds and computes, and what
crosses the link per sample."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..comm_model import Workload
from ..label_protocol import LABELS, label_protocol
from .groups import trainable_parameters, trained_weights
from .split import ClientPart, parse_cut
from .tinyllava import TinyLlava


@torch.no_grad()
def cut_profile(model: TinyLlava, pixel_values: torch.Tensor, input_ids: torch.Tensor, labels: str = "server") -> list[dict]:
    """One row per cut ('connector', 'lm:1', ...): client parameters (with the head, U-shaped),
    client forward FLOPs per sample (counted by torch's FlopCounterMode), and elements per
    sample sent up and down: the activations and their gradients, and what the label
    protocol adds (labels at the server: the label up; at the client: the logits down, the
    loss and d loss / d logits up; U-shaped: the hidden state at the answer position down,
    the loss and its gradient up)."""
    protocol = label_protocol(labels)
    batch = pixel_values.shape[0]
    out = protocol.output_elements(model.config.vocab_size, model.lm_hidden)
    head = model.lm.lm_head.weight.numel() if protocol.head_on_client else 0
    rows = []
    for k in range(model.num_lm_layers):
        cut = "connector" if k == 0 else f"lm:{k}"
        client = ClientPart(model, parse_cut(cut, model.num_lm_layers))
        counter = FlopCounterMode(display=False)
        with counter:
            feats = client.features(pixel_values, input_ids)
        per_sample = (feats.image[0].numel() + feats.text[0].numel())
        client_params = sum(p.numel() for p in client.parameters()) + head
        rows.append({
            "cut": cut,
            "client_parameters": client_params,
            "server_parameters": sum(p.numel() for p in model.parameters()) - client_params,
            "client_flops_per_sample": counter.get_total_flops() / batch,
            "up_elements_per_sample": per_sample + protocol.up_elements(model.config.vocab_size, model.lm_hidden),
            "down_elements_per_sample": per_sample + out,
        })
    return rows


@torch.no_grad()
def cut_workload(model: TinyLlava, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 cut: str = "connector", trains=("vision", "connector", "quantizers", "lm")) -> Workload:
    """What this model and cut put on the link, for the communication model, when the module
    groups `trains` train: the client part's weights as the protocol moves them (those that
    train, quantizer encoders included), the whole model's as FedAvg moves them
    (`sltestbed.averaging.model_weights`: those that train but the quantizers), and per
    modality the elements per sample at the cut for this batch (one label per sample)."""
    client = ClientPart(model, parse_cut(cut, model.num_lm_layers))
    feats = client.features(pixel_values[:1], input_ids[:1])
    trains_ids = {id(p) for p in trainable_parameters(model, trains)}
    frozen = {name for name, p in client.named_parameters() if id(p) not in trains_ids}
    client_state = sum(v.numel() for k, v in client.state_dict().items() if k not in frozen)  # as trainable_state
    whole = sum(v.numel() for k, v in trained_weights(model, trains).items() if not k.startswith("quant_"))
    return Workload(client_state, whole, {m: x[0].numel() for m, x in feats.items()}, label_elements=1)


def main(argv=None) -> None:
    """python -m sltestbed.model.profile [--preset tiny] [--dataset digits-vqa] [--labels server]"""
    import argparse

    from ..data import VQACollator, build_tokenizer, load_dataset
    from .config import PRESETS, preset

    p = argparse.ArgumentParser(description="Cut-layer profile of the model on a batch of a data set")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--dataset", default="digits-vqa")
    p.add_argument("--labels", default="server", choices=LABELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--real", action="store_true", help="also the real-size models (published configurations on the "
                                                       "meta device, no weights), beside their published sizes")
    p.add_argument("--text-tokens", type=int, default=64, help="--real: text tokens per sample assumed at the cut")
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, image_size=PRESETS[args.preset]["image_size"])
    tokenizer = build_tokenizer([ds])
    batch = VQACollator(tokenizer)([ds[i] for i in range(min(args.batch, len(ds)))])
    torch.manual_seed(0)
    model = TinyLlava(preset(args.preset, vocab_size=len(tokenizer)))
    rows = cut_profile(model, batch["pixel_values"], batch["input_ids"], args.labels)
    print(f"{'cut':10s} {'client params':>14s} {'server params':>14s} {'client MFLOP/sample':>20s} "
          f"{'up elem/sample':>15s} {'down elem/sample':>17s}")
    for r in rows:
        print(f"{r['cut']:10s} {r['client_parameters']:>14,} {r['server_parameters']:>14,} "
              f"{r['client_flops_per_sample'] / 1e6:>20.2f} {r['up_elements_per_sample']:>15,} "
              f"{r['down_elements_per_sample']:>17,}")
    if args.real:
        print_real(args.text_tokens)



def print_real(text_tokens: int) -> None:
    """The real-size cuts (`real_sizes.py`) and each component's weights against its published count."""
    from .real_sizes import PUBLISHED, component_parameters, real_cuts

    print(f"\nreal sizes, meta device (729 image tokens for SigLIP so400m at 384/14, {text_tokens} text tokens, "
          f"1 label per sample)")
    print(f"{'cut':36s} {'client params':>14s} {'server params':>14s} {'client GFLOP/sample':>20s} "
          f"{'up elem/sample':>15s} {'down elem/sample':>17s}")
    for r in real_cuts(text_tokens):
        print(f"{r.name + ' ' + r.cut:36s} {r.client_params:>14,} {r.server_params:>14,} "
              f"{r.client_flops_per_sample / 1e9:>20.2f} {r.up_elements:>15,} {r.down_elements:>17,}")
    print(f"\n{'component':18s} {'ours':>14s} {'published':>14s} {'diff':>7s}  source")
    for name, published in PUBLISHED.items():
        ours = component_parameters(name)
        print(f"{name:18s} {ours:>14,} {published.parameters:>14,.0f} {100 * (ours / published.parameters - 1):>+6.2f}%  "
              f"{published.source}")


if __name__ == "__main__":
    main()
