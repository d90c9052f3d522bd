"""Where a role computes and at what precision: the run-config keys `device` (auto, cpu, cuda,
cuda:i) and `precision` (fp32, or bf16 autocast).

    compute = Compute.of("auto", "bf16")         # cuda where there is one, else the CPU
    with compute.autocast():
        ...                                      # the model's forward at the run's precision

What crosses the link is the same on every device: payloads, gradients and outputs leave a
role on the CPU (the codec packs them there) and are moved to the role's device on arrival;
the quantizer encoders always compute in fp32 (`model.split.ClientPart`), so the codes, and
every byte counted, do not depend on the device or the precision. Weights and optimizer state
are saved from the CPU, so a node's state restores on a worker without a GPU too.
"""

from __future__ import annotations

import contextlib
import re
from typing import NamedTuple

import torch

PRECISIONS = ("fp32", "bf16")
DEVICE_FORMS = "auto, cpu, cuda or cuda:<index>"


def check_device(name: str) -> None:
    """ValueError unless `name` is a device the run config may name (availability is checked
    where a role is built: `resolve_device`)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"run config 'device' = {name!r} is not a device: use {DEVICE_FORMS}")


def resolve_device(name: str) -> torch.device:
    """The torch device of `name`: "auto" is the first CUDA device where there is one, else
    the CPU; a CUDA device that this machine lacks is a ValueError naming it."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"run config 'device' = {name!r}: this machine has no CUDA device (use 'auto' or 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"run config 'device' = {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s)")
    return device


class Compute(NamedTuple):
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @classmethod
    def of(cls, device: str = "cpu", precision: str = "fp32") -> "Compute":
        if precision not in PRECISIONS:
            raise ValueError(f"run config 'precision' = {precision!r} is not allowed; allowed values: "
                             f"{', '.join(PRECISIONS)}")
        return cls(resolve_device(device), precision)

    def autocast(self):
        """The forward's precision: bf16 autocast, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def here(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor that arrived (on the CPU) moved to this role's device."""
        return tensor.to(self.device)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the CPU, detached: what leaves a role, or is saved."""
    return tensor.detach().to("cpu", copy=True)


CPU = Compute()
