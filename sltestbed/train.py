"""Train the TinyLLaVA-style model on a VQA data set, in one process.

    python -m sltestbed.train                                   # centralized reference
    python -m sltestbed.train --quantizer learned --bits 2      # split, 2-bit learned quantizer
    python -m sltestbed.train --quantizer learned uniform --bits 1 2 3 4 8 --reference fp32
                                                                # accuracy-vs-bits table

Without --quantizer it reports the centralized reference: the unsplit model trained end to
end (all modules, one stage, --base-epochs at --base-lr), which is also the base model that
split fine-tuning starts from (trained once and cached, standing in for a pretrained
foundation model; the Flower app uses the same one for the same config). With --quantizer
it starts from that base model (--base none trains from scratch instead), cuts it (--cut),
puts one quantizer per modality at the cut and fine-tunes it with the two-stage regime
(--epochs at --lr).

Every default is the Flower app's (`sltestbed.experiment.ExperimentConfig`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from .base_model import BaseSpec, ensure_base_model, training_record
from .data import majority_baseline
from .experiment import LABELS, ExperimentConfig
from .model import SplitTinyLlava, TinyLlava
from .model.config import PRESETS
from .quantizers import SCHEMES, implied_bits
from .splits import load_splits
from .trainer import TensorData, evaluate, stage_regime, train_stage


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_spec(args) -> BaseSpec:
    return BaseSpec(args.dataset, args.preset, args.image_size, args.seed, args.base_epochs, args.base_lr,
                    ExperimentConfig.base_batch_size, args.test_fraction, tuple(sorted(args.dataset_options.items())),
                    public_fraction=args.public_fraction)


def train_split(args, quantizer: str, bits: int | None, base_dir: str | None, train_data, test_data, vocab_size) -> dict:
    torch.manual_seed(args.seed)
    overrides = dict(quantizer=quantizer, bits=bits)
    model = TinyLlava.from_pretrained(base_dir, **overrides) if base_dir else TinyLlava(
        base_spec(args).model_config(vocab_size, **overrides))
    split = SplitTinyLlava(model, cut=args.cut, labels=args.labels)
    losses = []
    for stage in stage_regime(args.stages, args.epochs, args.lr):
        losses += train_stage(split, model, train_data, stage, args.batch_size, args.seed,
                              distortion_weight=args.distortion_weight, progress=not args.quiet)
    return {"losses": losses, **evaluate(split, test_data)}


# Epochs of the in-process split fine-tuning (--quantizer). This command's own: a Flower run
# trains num-rounds x local-epochs passes over each client's partition instead.
SPLIT_EPOCHS = 10


def parse_args(argv=None):
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, help="digits-vqa, shapes-vqa or hf:<path>")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the data set, e.g. num_images=8000 for shapes-vqa (repeatable)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--image-size", type=int, help="override the preset's image size (a multiple of its patch size)")
    p.add_argument("--base-epochs", type=int, default=d.base_epochs,
                   help="epochs of the base model, i.e. of the centralized reference")
    p.add_argument("--base-lr", type=float, default=d.base_lr, help="learning rate of the base model")
    p.add_argument("--epochs", type=int, default=SPLIT_EPOCHS, help="split fine-tuning epochs (with --quantizer)")
    p.add_argument("--lr", type=float, default=d.lr, help="split fine-tuning learning rate (stage 1; stage 2 a quarter)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="split fine-tuning batch size")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--public-fraction", type=float, default=d.public_fraction,
                   help="of the images: the attacker's public pool, trained on by no one here")
    p.add_argument("--quantizer", nargs="+", choices=SCHEMES, help="split training with these quantizers")
    p.add_argument("--bits", nargs="+", type=int, help="bit widths (each quantizer x each width)")
    p.add_argument("--reference", nargs="*", default=[], choices=SCHEMES,
                   help="extra rows at their implied width, e.g. fp32 fp16")
    p.add_argument("--cut", default=d.cut, help="'connector' or 'lm:k'")
    p.add_argument("--labels", default=d.labels, choices=LABELS)
    p.add_argument("--stages", default="two-stage", choices=("full", "two-stage"))
    p.add_argument("--distortion-weight", type=float, default=d.distortion_weight)
    p.add_argument("--base", default=d.base, help="'auto' (cached centralized reference), a model directory, or 'none'")
    p.add_argument("--cache-dir", default=os.environ.get("SLTESTBED_CACHE", d.cache_dir))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--save", help="save the trained model (single run) to this directory")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in ("base_epochs", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.test_fraction < 1:
        p.error("--test-fraction must be in (0, 1)")
    if not 0 < args.public_fraction < 1 or args.test_fraction + args.public_fraction >= 1:
        p.error("--public-fraction must be in (0, 1) and leave training data beside --test-fraction")
    for name in ("lr", "base_lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.bits and not args.quantizer:
        p.error("--bits needs --quantizer")
    if not (args.quantizer or args.reference):
        explicit = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        if explicit & {"--epochs", "--lr"}:
            p.error("--epochs and --lr set the split fine-tuning; the centralized reference is the base model: "
                    "use --base-epochs and --base-lr")
    if args.reference and not args.quantizer:
        args.quantizer = []
    runs = [(q, b) for q in (args.quantizer or []) for b in (args.bits or [None])]
    runs += [(q, None) for q in args.reference]
    try:
        args.runs = [(q, implied_bits(q, b)) for q, b in runs]
    except ValueError as exc:
        p.error(str(exc))
    try:
        args.dataset_options = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
                                for k, v in (item.split("=", 1) for item in args.dataset_option)}
    except ValueError:
        p.error("--dataset-option takes KEY=VALUE")
    return args


def main(argv=None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test, _, tokenizer, collator, _ = load_splits(args.dataset, args.seed, args.test_fraction,
                                                         args.public_fraction,
                                                         args.image_size or PRESETS[args.preset]["image_size"],
                                                         tuple(sorted(args.dataset_options.items())))
    train_data, test_data = TensorData(train, collator), TensorData(test, collator)
    vocab = len(tokenizer)
    baseline = majority_baseline(test)
    log(f"{args.dataset}: {len(train_data)} training and {len(test_data)} held-out questions, vocabulary {vocab}")

    data = lambda: (train_data, test_data)  # noqa: E731
    if not args.runs:  # the centralized reference: the base model, trained now unless cached
        base_dir = ensure_base_model("auto", base_spec(args), args.cache_dir, data, vocab, not args.quiet, log_fn=log)
        model = TinyLlava.from_pretrained(base_dir)
        if args.save:
            model.save_pretrained(args.save)
        runs = [{"mode": "centralized", "quantizer": None, "bits": 32, "model": base_dir,
                 "losses": training_record(base_dir).get("losses"), **evaluate(model, test_data)}]
    else:
        base_dir = ensure_base_model(args.base, base_spec(args), args.cache_dir, data, vocab, not args.quiet,
                                     log_fn=log)
        runs = []
        for quantizer, bits in args.runs:
            t0 = time.perf_counter()
            result = train_split(args, quantizer, bits, base_dir, train_data, test_data, vocab)
            runs.append({"mode": "split", "quantizer": quantizer, "bits": bits, "cut": args.cut,
                         "seconds": time.perf_counter() - t0, **result})
            log(f"  {quantizer:8s} {bits:2d} bits: accuracy {result['accuracy']:.4f}")

    seconds = time.perf_counter() - started
    print_table(runs, baseline)
    summary = {"accuracy": runs[0]["accuracy"], "accuracy_by_type": runs[0]["accuracy_by_type"], "seconds": seconds,
               "majority_baseline": baseline, "runs": runs, "dataset": args.dataset, "preset": args.preset,
               "seed": args.seed, "base_epochs": args.base_epochs, "epochs": args.epochs if args.runs else None,
               "torch": torch.__version__}
    print(f"wall time {seconds:.1f} s")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.json_path}")
    return summary


def print_table(runs: list[dict], baseline: dict) -> None:
    qtypes = sorted(baseline)
    header = ["mode", "quantizer", "bits", "accuracy"] + qtypes
    rows = [["majority answer", "", "", ""] + [f"{baseline[q]:.3f}" for q in qtypes]]
    for r in runs:
        rows.append([r["mode"], r["quantizer"] or "-", str(r["bits"]), f"{r['accuracy']:.4f}"]
                    + [f"{r['accuracy_by_type'].get(q, float('nan')):.3f}" for q in qtypes])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
