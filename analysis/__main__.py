"""python -m analysis RUNS_DIR [RUNS_DIR ...] --out DIR [--network 4g wifi ethernet NAME=UP,DOWN,RTT] [--note TEXT]

Writes comm_table.{csv,md,tex}, network_time.{csv,md}, accuracy_vs_bits.{png,pdf},
accuracy_vs_bytes.{png,pdf}, training_curves.{png,pdf} (loss and accuracy per round; each of
the three once more per further data set, as <name>_<dataset>), entropy.{png,pdf} when a run
chose its bits by calibration and, when a run holds privacy.json (attacks after training),
privacy_table.{csv,md,tex}, privacy_vs_bits.{png,pdf} and reconstructions.{png,pdf} (one more
per further data set) and tradeoff.{png,pdf}; prints the tables. Accuracies and attack scores are means over seeds with
95% Student t intervals; comparisons with fp32 are paired by seed (see analysis/stats.py).
`--note` (for instance the machine the runs were measured on) is added to the figures' titles
and the tables' captions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import comm_table, network, plots, privacy, privacy_plots
from .run_dirs import load_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[2])
    parser.add_argument("runs", nargs="+", help="run directories, or directories holding them (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the tables and figures")
    parser.add_argument("--network", nargs="+", default=list(network.PRESETS),
                        help="links for the time model: presets (" + ", ".join(network.PRESETS)
                             + ") or NAME=UP,DOWN,RTT in Mbit/s, Mbit/s, ms")
    parser.add_argument("--note", default="",
                        help="a line for the figures' titles and the tables' captions, e.g. the machine")
    args = parser.parse_args(argv)
    try:
        links = [network.parse_link(text) for text in args.network]
        runs = load_runs(args.runs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"{len(runs)} runs from {', '.join(args.runs)}", flush=True)
    note = args.note.strip().rstrip(".")
    try:
        table = comm_table.comm_table(runs)
        times = network.network_table(runs, links)
        leakage = privacy.privacy_table(runs) if any(r.privacy for r in runs) else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    caption = comm_table.CAPTION + (f" {note}." if note else "")
    written = comm_table.write_table(table, out, caption=caption)
    times.to_csv(out / "network_time.csv", index=False)
    shown_times = network.shown(times, links)
    (out / "network_time.md").write_text("Links: " + "; ".join(link.describe() for link in links)
                                         + (f". {note}." if note else "") + "\n\n"
                                         + shown_times.to_markdown(index=False, disable_numparse=True) + "\n")
    written += [out / "network_time.csv", out / "network_time.md"]
    for suffix, own in plots.by_dataset(runs):  # a figure per data set: tasks share no accuracy axis
        written += plots.accuracy_vs_bits(comm_table.comm_table(own), comm_table.paired_deltas(comm_table.per_run(own)),
                                          own, out, note, stem="accuracy_vs_bits" + suffix)
        written += plots.accuracy_vs_bytes(own, out, note, stem="accuracy_vs_bytes" + suffix)
        written += plots.training_curves(own, out, note, stem="training_curves" + suffix)
    auto = [r for r in runs if r.calibration]
    if auto:
        written += plots.entropy_figure(sorted(auto, key=lambda r: r.seed)[0], out, note)
    if leakage is not None:
        leakage_caption = privacy.CAPTION + (f" {note}." if note else "")
        written += privacy.write_table(leakage, out, caption=leakage_caption)
        try:
            written += privacy_plots.privacy_vs_bits(leakage, runs, out, note)
            written += privacy_plots.reconstructions(runs, out, note)
            written += privacy_plots.tradeoff(leakage, runs, out, note)
        except ValueError as exc:  # an unreadable reconstructions.npz
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(caption)
    print(comm_table.shown(table).to_markdown(index=False, disable_numparse=True))
    print()
    print("Communication time per round: " + "; ".join(link.describe() for link in links))
    print(shown_times.to_markdown(index=False, disable_numparse=True))
    if leakage is not None:
        print()
        print(leakage_caption)
        print(privacy.shown(leakage).to_markdown(index=False, disable_numparse=True))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
