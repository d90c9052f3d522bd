"""Training and evaluation loops shared by the centralized reference and in-process split
training: which modules train in a stage, batches from pre-collated tensors, AdamW with
warm-up and cosine decay (`OptimConfig`, also what each side of a split step steps with,
through `Updates`), a split role's seeded batch order (`BatchCursor`), exact-match accuracy
per question type."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .model import TinyLlava
from .model.groups import MODULE_GROUPS, trainable_parameters
from .scoring import Scores



@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up over the first `warmup` of `total_steps`, then cosine decay."""

    lr: float
    total_steps: int
    warmup: float = 0.03
    weight_decay: float = 0.01

    def build(self, params):
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.warmup * self.total_steps),
                                                   max(self.total_steps, 1))
        return optimizer, schedule


@dataclass(frozen=True)
class Stage:
    """One training stage: which module groups train, for how long, how fast."""

    name: str
    trains: tuple[str, ...]
    epochs: int
    lr: float
    warmup: float = 0.03

    def __post_init__(self):
        unknown = set(self.trains) - set(MODULE_GROUPS)
        if unknown or not self.trains:
            raise ValueError(f"stage {self.name!r}: unknown or no module groups {sorted(unknown)}; choose from {MODULE_GROUPS}")
        if self.epochs < 0 or not self.lr > 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"stage {self.name!r}: epochs >= 0, lr > 0 and warmup in [0, 1) required")


def stage_regime(name: str, epochs: int, lr: float) -> list[Stage]:
    """Named regimes. 'full': everything trains (the centralized reference, the base model).
    'two-stage' (Quantized-TinyLLaVA): stage 1 aligns connector and quantizers with the
    language model and vision tower frozen; stage 2 also fine-tunes the language model at a
    lower rate. Epochs are split evenly between the two stages."""
    if name == "full":
        return [Stage("full", MODULE_GROUPS, epochs, lr)]
    if name == "two-stage":
        first = max(1, epochs // 2)
        return [Stage("align", ("connector", "quantizers"), first, lr, warmup=0.02),
                Stage("finetune", ("connector", "quantizers", "lm"), epochs - first, lr / 4, warmup=0.03)]
    raise ValueError(f"unknown stage regime {name!r}: choose 'full' or 'two-stage'")


def set_trainable(model: TinyLlava, groups) -> list[nn.Parameter]:
    """Only `groups` train (`trainable_parameters`); everything else is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_parameters(model, groups)
    for p in params:
        p.requires_grad_(True)
    return params


class TensorData:
    """A whole (small) data set collated once into tensors; batches are index slices."""

    def __init__(self, dataset, collator, qtypes: list[str] | None = None):
        """`qtypes`: the question types to index by (default: those present); shards of one
        data set pass the whole set's list, so an index means the same type everywhere."""
        if len(dataset) == 0:
            raise ValueError("empty data set")
        batch = collator([dataset[i] for i in range(len(dataset))])
        self.pixel_values, self.input_ids = batch["pixel_values"], batch["input_ids"]
        self.lengths, self.labels = batch["lengths"], batch["labels"]
        self.qtypes = sorted(qtypes if qtypes is not None else set(batch["qtype"]))
        self.qtype_index = torch.tensor([self.qtypes.index(q) for q in batch["qtype"]])

    def __len__(self) -> int:
        return self.labels.numel()

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size])

    def batch(self, idx: torch.Tensor) -> dict:
        """Rows `idx`, question tokens trimmed to the longest in the batch (trailing padding
        never reaches the answer position of a causal model, so it need not be sent)."""
        lengths = self.lengths[idx]
        return {"pixel_values": self.pixel_values[idx], "input_ids": self.input_ids[idx, : int(lengths.max())],
                "lengths": lengths, "labels": self.labels[idx], "qtype_index": self.qtype_index[idx]}


def forward_fn(model: nn.Module):
    """(logits, auxiliary loss) for a batch, from an unsplit model or a SplitTinyLlava."""
    def run(batch):
        out = model(batch["pixel_values"], batch["input_ids"], batch["lengths"])
        return out if isinstance(out, tuple) else (out, out.new_zeros(()))
    return run


def train_stage(model: nn.Module, base: TinyLlava, data: TensorData, stage: Stage, batch_size: int,
                seed: int, distortion_weight: float = 0.0, progress: bool = True, weight_decay: float = 0.01,
                on_epoch=None):
    """Train `model` (unsplit or split; its weights live in `base`) for one stage. Returns the
    mean training loss of each epoch; `on_epoch(epoch, loss)` is called after each.
    `distortion_weight`: the quantizers' regulariser's weight (a run passes its
    `distortion-weight`; an unsplit model has no quantizers and no such term)."""
    params = set_trainable(base, stage.trains)
    steps = stage.epochs * -(-len(data) // batch_size)
    optimizer, schedule = OptimConfig(stage.lr, steps, stage.warmup, weight_decay).build(params)
    generator = torch.Generator().manual_seed(seed)
    run = forward_fn(model)
    losses = []
    model.train()
    bar = tqdm(total=steps, desc=stage.name, disable=not progress, leave=False, mininterval=1.0)
    for _ in range(stage.epochs):
        total, count = 0.0, 0
        for batch in data.batches(batch_size, shuffle=True, generator=generator):
            logits, aux = run(batch)
            loss = nn.functional.cross_entropy(logits, batch["labels"]) + distortion_weight * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * batch["labels"].numel()
            count += batch["labels"].numel()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        losses.append(total / count)
        if on_epoch is not None:
            on_epoch(len(losses), losses[-1])
    bar.close()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 256) -> dict:
    """Exact-match accuracy of the greedy one-token answer, overall and per question type."""
    model.eval()
    run = forward_fn(model)
    scores = Scores()
    for batch in data.batches(batch_size):
        logits, _ = run(batch)
        scores += Scores.of(logits.argmax(-1), batch["labels"], batch["qtype_index"], data.qtypes)
    return scores.result()


class BatchCursor:
    """Batches over n rows, epoch after epoch, each epoch in a fresh seeded random order
    (the same draws as `TensorData.batches(shuffle=True)` with one generator)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None
        self.position = 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def next(self) -> torch.Tensor:
        if self.order is None or self.position >= self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        idx = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


class Updates:
    """AdamW and its schedule over the parameters a side trains; nothing to do where it trains
    none (a side whose modules are all frozen still passes gradients on)."""

    def __init__(self, optim: OptimConfig, params: list[nn.Parameter]):
        self.optimizer, self.schedule = optim.build(params) if params else (None, None)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.schedule.step()

    def state_dict(self) -> dict | None:
        if self.optimizer is None:
            return None
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
