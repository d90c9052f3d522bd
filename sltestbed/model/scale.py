"""python -m sltestbed.model.scale --out DIR: bytes per training round against model size, for
every strategy, from the communication model (`sltestbed.comm_model`) and the real-size cuts
(`real_sizes.py`) beside the small presets (`tiny`, `wide`: their cut on digits-VQA).

Writes into DIR:

    scale_table.md            one row per cut: client / server / whole-model parameters, client
                              GFLOP per sample, elements up and down per sample, bytes per
                              round of each strategy (MB, 1 MB = 1e6 B), and the crossover:
                              samples per client per round at which parallel / splitfed
                              (= sequential) send as many bytes as FedAvg
    scale_bytes_vs_size.png   bytes per round against whole-model parameters (log-log): per
                              cut width, its client part and cut fixed and the server grown, a
                              line for parallel and one for sequential / SplitFed v1 / v2
                              (identical bytes: K client parts each way); FedAvg drawn;
                              crossovers marked; each real model at its own size
    scale_crossover.png       the crossover samples per client per round against activation bits,
                              per cut (parallel), gradients fp32 and at the activation width

Assumptions (options): clients K, samples per client per round n, server batch B, activation
bits up, gradient bits down, 32-bit weights and labels, T text tokens.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from .. import comm_model
from ..comm_model import Round

BITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
STRATEGY_COLUMNS = ("parallel", "sequential", "splitfed-v1", "splitfed-v2", "fedavg")


def preset_cut(name: str):
    """A small preset's cut, as a `real_sizes.RealCut`-like row, on digits-VQA."""
    import torch

    from ..data import VQACollator, build_tokenizer, load_dataset
    from .config import PRESETS, preset
    from .profile import cut_profile, cut_workload
    from .real_sizes import RealCut
    from .tinyllava import TinyLlava

    ds = load_dataset("digits-vqa", image_size=PRESETS[name]["image_size"])
    tokenizer = build_tokenizer([ds])
    batch = VQACollator(tokenizer)([ds[i] for i in range(16)])
    torch.manual_seed(0)
    model = TinyLlava(preset(name, vocab_size=len(tokenizer), quantizer="learned", bits=2))
    row = cut_profile(model, batch["pixel_values"], batch["input_ids"])[0]
    w = cut_workload(model, batch["pixel_values"], batch["input_ids"])
    return RealCut(f"preset-{name}", "connector", w.client_params, w.fedavg_params - w.client_params, w.fedavg_params,
                   row["client_flops_per_sample"], w.cut_elements, w.label_elements)


def table(cuts, rnd: Round) -> list[dict]:
    rows = []
    for c in cuts:
        w = c.workload()
        row = {"cut": c.name, "client params": c.client_params, "server params": c.server_params,
               "whole model (FedAvg) params": c.fedavg_params, "client GFLOP/sample": c.client_flops_per_sample / 1e9,
               "up elem/sample": c.up_elements, "down elem/sample": c.down_elements}
        for s in STRATEGY_COLUMNS:
            row[f"{s} MB/round"] = comm_model.total_bytes(s, w, rnd) / 1e6
        for s in ("parallel", "splitfed-v1"):
            row[f"crossover n ({s})"] = comm_model.crossover_samples(s, w, rnd.clients, rnd.activation_bits,
                                                                     rnd.gradient_bits, rnd.weight_bits, rnd.label_bits)
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 10 else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(rows: list[dict], assumption: str) -> str:
    cols = list(rows[0])
    lines = [f"Assumed: {assumption}.", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def figures(cuts, rnd: Round, out: Path, assumption: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = np.logspace(4, 11, 200)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    fedavg = [comm_model.weight_bytes_per_round("fedavg", comm_model.Workload(0, round(p), {"any": 1}), rnd.clients,
                                                rnd.weight_bits) for p in sizes]
    ax.plot(sizes, fedavg, color="black", lw=2.5, label="FedAvg (whole model up and down per client)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(cuts):
        w, color = c.workload(), colors[i % len(colors)]
        for strategy, style, what in (("parallel", "-", "parallel"), ("splitfed-v1", "--", "seq. / SplitFed v1, v2")):
            grown = [w.with_server_params(max(0.0, p - w.client_params)) for p in sizes]
            ys = [comm_model.total_bytes(strategy, g, rnd) for g in grown]
            keep = sizes >= w.client_params
            ax.plot(sizes[keep], np.array(ys)[keep], style, color=color, lw=1.4,
                    label=f"{c.name} (cut {w.elements_per_sample:,} elem/sample): {what}")
            star = comm_model.crossover_model_size(strategy, w, rnd)
            if star >= w.client_params:
                ax.plot([star], [comm_model.weight_bytes_per_round("fedavg", w.with_server_params(star - w.client_params),
                                                                   rnd.clients, rnd.weight_bits)],
                        "X", color=color, ms=9, mec="black")
        ax.plot([c.fedavg_params], [comm_model.total_bytes("parallel", w, rnd)], "o", color=color, ms=8, mec="black")
    ax.plot([], [], "X", color="grey", mec="black", label="crossover: split = FedAvg")
    ax.plot([], [], "o", color="grey", mec="black", label="the model at its real size (parallel)")
    ax.set(xscale="log", yscale="log", xlabel="whole-model parameters (client + server)",
           ylabel="bytes per training round, up + down (B)",
           title="Bytes per round against model size (client part and cut fixed, server grown)\n"
                 + textwrap.fill(assumption, 110))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    paths = [out / "scale_bytes_vs_size.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=150)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 6))
    for i, c in enumerate(cuts):
        w, color = c.workload(), colors[i % len(colors)]
        for same, style in ((False, "-"), (True, ":")):
            ns = [comm_model.crossover_samples("parallel", w, rnd.clients, b, b if same else rnd.gradient_bits,
                                               rnd.weight_bits, rnd.label_bits) for b in BITS]
            label = f"{c.name}: gradients {'at the activation width' if same else f'{rnd.gradient_bits} bits'}"
            ax.plot(BITS, ns, style, marker="o", ms=3, color=color, label=label)
    ax.set(xscale="log", yscale="log", xlabel="activation bits per element (up)",
           ylabel="samples per client per round at which parallel split = FedAvg",
           title=f"Crossover: below a line split learning sends fewer bytes than FedAvg\n"
                 f"K = {rnd.clients} clients, 32-bit weights and labels, parallel (MPSL) strategy")
    ax.set_xticks(BITS, [str(b) for b in BITS])
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(out / "scale_crossover.png")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=150)
    plt.close(fig)
    return paths


def main(argv=None) -> None:
    from .real_sizes import DEFAULT_TEXT_TOKENS, real_cuts

    p = argparse.ArgumentParser(description="Bytes per round against model size, every strategy, and the crossover "
                                            "with FedAvg (communication model; real sizes on the meta device)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--samples", type=int, default=1000, help="samples per client per round")
    p.add_argument("--batch", type=int, default=64, help="server batch B")
    p.add_argument("--activation-bits", type=int, default=2)
    p.add_argument("--gradient-bits", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS)
    args = p.parse_args(argv)
    rnd = Round(args.samples, args.clients, args.batch, args.activation_bits, args.gradient_bits)
    assumption = (f"K = {rnd.clients} clients, n = {rnd.samples_per_client} samples per client per round, "
                  f"{rnd.activation_bits}-bit activations up, {rnd.gradient_bits}-bit gradients down, "
                  f"32-bit weights, T = {args.text_tokens} text tokens")
    cuts = []
    for i, step in enumerate(("preset tiny", "preset wide", "real sizes (meta device)")):
        print(f"[{i + 1}/3] profiling {step} ...", flush=True)
        cuts += [preset_cut(step.split()[1])] if step.startswith("preset") else real_cuts(args.text_tokens)
    rows = table(cuts, rnd)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, assumption)
    (out / "scale_table.md").write_text(text)
    print(text)
    for path in figures(cuts, rnd, out, assumption):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
