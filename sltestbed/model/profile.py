"""Cut-layer profile: for each candidate cut, what the client holds and computes, and what
crosses the link per sample."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .split import ClientPart, parse_cut
from .tinyllava import TinyLlava


@torch.no_grad()
def cut_profile(model: TinyLlava, pixel_values: torch.Tensor, input_ids: torch.Tensor, labels: str = "server") -> list[dict]:
    """One row per cut ('connector', 'lm:1', ...): client parameters, client forward FLOPs per
    sample (counted by torch's FlopCounterMode), and elements per sample sent up (activations,
    plus the label at the server or the head's input gradient in the U-shape) and down
    (cut-layer gradients, plus the server's answer-position hidden state in the U-shape)."""
    batch = pixel_values.shape[0]
    d = model.lm_hidden
    rows = []
    for k in range(model.num_lm_layers):
        cut = "connector" if k == 0 else f"lm:{k}"
        client = ClientPart(model, parse_cut(cut, model.num_lm_layers))
        counter = FlopCounterMode(display=False)
        with counter:
            feats = client.features(pixel_values, input_ids)
        per_sample = (feats.image[0].numel() + feats.text[0].numel())
        u_shaped = labels == "client"
        rows.append({
            "cut": cut,
            "client_parameters": sum(p.numel() for p in client.parameters()),
            "server_parameters": sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in client.parameters()),
            "client_flops_per_sample": counter.get_total_flops() / batch,
            "up_elements_per_sample": per_sample + (d if u_shaped else 1),
            "down_elements_per_sample": per_sample + (d if u_shaped else 0),
        })
    return rows


def main(argv=None) -> None:
    """python -m sltestbed.model.profile [--preset default] [--dataset digits-vqa] [--labels server]"""
    import argparse

    from ..data import VQACollator, build_tokenizer, load_dataset
    from .config import PRESETS, preset

    p = argparse.ArgumentParser(description="Cut-layer profile of the model on a batch of a data set")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--dataset", default="digits-vqa")
    p.add_argument("--labels", default="server", choices=("server", "client"))
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset)
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


if __name__ == "__main__":
    main()
