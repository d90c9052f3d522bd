"""A run directory's checkpoint files (written by `strategies.checkpoint`), and what the
harness may read of them without torch.

    checkpoint.pt     the checkpoint itself (torch.save): server side, node states, ledger
    checkpoint.json   its round, the run's round count, its config and partitions, as JSON
"""

from __future__ import annotations

import json
import os

CHECKPOINT = "checkpoint.pt"
ABOUT = "checkpoint.json"


def checkpoint_about(directory) -> dict | None:
    """The round, round count and config of the checkpoint in `directory` (None: none there)."""
    path = os.path.join(directory, ABOUT)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, CHECKPOINT)):
        return None
    with open(path) as f:
        return json.load(f)
