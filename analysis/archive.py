"""Keep finished run directories in the repository: what the analysis reads, small.

    python -m analysis.archive docs/results/runs

For every finished run below the given directories (`run_dirs.find_runs`): `ledger.csv.gz`
is written beside `ledger.csv` (gzip, reproducible: no name or time in its header), which is
what the analysis reads where `ledger.csv` is absent. The repository keeps config.json,
summary.json, metrics.csv, ledger.csv.gz, privacy.json, reconstructions.npz and sweep.json;
`.gitignore` leaves out ledger.csv and observation.pt (what the server kept, for
`python -m sltestbed.privacy RUN_DIR`: attacking an archived run again needs the run again).
A sweep pointed at the same directory counts its archived points as done (same config) and
runs only the missing ones, so a sweep longer than one machine's session grows across them.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

from .run_dirs import find_runs


def pack_ledger(directory: Path) -> Path | None:
    """Write directory/ledger.csv.gz from ledger.csv (unless it is there and newer); returns
    the path written, None where nothing was to do."""
    plain, packed = directory / "ledger.csv", directory / "ledger.csv.gz"
    if not plain.is_file() or (packed.is_file() and packed.stat().st_mtime >= plain.stat().st_mtime):
        return None
    tmp = packed.with_suffix(".gz.tmp")
    with open(plain, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    tmp.replace(packed)
    return packed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="directories holding run directories (searched recursively)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.runs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = [p for p in map(pack_ledger, runs) if p is not None]
    print(f"{len(runs)} runs; {len(written)} ledgers packed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
