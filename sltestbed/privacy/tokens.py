"""Question-token recovery from the text tokens the server receives.

nearest (cut "connector", where a text token is its embedding): every vocabulary word's
embedding in the base model (or the white-box client's table), through the attacker's copy of
the quantizer's projection, is a candidate c_v. For most schemes what arrives is an affine
image of the pre-quantization features, rounded: the learned quantizer maps u to
a u + b with a, b set by the batch's mean and standard deviation (and clips), uniform min-max
and the float formats keep the scale (a = 1, b = 0). Element-wise non-linear schemes (FSQ's
tanh bound) are affine in the table as the attacker's quantizer maps it, so a second
candidate set is the table through the attacker's encoder, and each batch keeps the set that
fits it better (the smaller residual). Per observed batch and candidate set the attack
    1. starts from (a, b) calibrated on auxiliary batches pushed through the same quantizer
       (the median least-squares fit over them),
    2. maps the candidates with (a, b) and snaps them onto the batch's observed grid of
       levels (when there are at most 256: a quantizer's levels), and gives each position
       the candidate nearest in L2 (ties broken by the distance before snapping); padding
       positions (>= the length the server is sent) are known to be padding,
    3. refits (a, b) by least squares on the assigned pairs, away from the extreme levels
       (where the quantizer clips), and repeats 2-3 a few times.
learned (any cut): a small MLP from one received token vector, its position and the question's
length (which the server is sent) to its word, trained on the auxiliary questions as the
server would receive them (same quantizer, width, batch size); where the vector says little,
it falls back on what position and length predict.

Token accuracy counts the real question tokens; its baseline is guessing, for each
position, the auxiliary questions' most common word at that position.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .observation import InferredTokens, Knowledge, Observation, seeded

MAX_LEVELS = 256


@dataclass(frozen=True)
class TextBudget:
    refits: int = 4  # nearest: rounds of assignment and affine refit
    steps: int = 600  # learned: optimizer steps
    batch_size: int = 256  # learned: token vectors per step
    hidden: int = 128
    passes: int = 2  # learned: passes of the auxiliary questions (fresh batch groupings)
    lr: float = 3e-3
    max_positions: int = 32  # learned: positions and lengths one-hot encoded up to this (longer share the last)


def _padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)


def _candidate_sets(knowledge: Knowledge, quantizer: str, widths: dict[str, int]) -> list[torch.Tensor]:
    """Text features of every vocabulary word (V x d) at cut "connector": before the rounding
    (through the learned quantizer's input projection, if any), and through the encoder."""
    part = knowledge.client_part(quantizer, widths)
    encoder = part.encoders["text"]
    with torch.no_grad():
        table = part.embed_tokens.weight.float()
        proj = getattr(encoder, "proj", None)  # the learned quantizer's input projection
        return [proj(table) if proj is not None else table, encoder(table.unsqueeze(0)).values[0]]


def _affine_fit(observed: torch.Tensor, mapped_from: torch.Tensor, extreme: torch.Tensor | None):
    """Least squares (a, b) of observed ~ a * mapped_from + b, leaving out clipped entries."""
    keep = torch.ones_like(observed, dtype=torch.bool) if extreme is None else ~extreme
    x, y = mapped_from[keep], observed[keep]
    if x.numel() < 2 or float(x.var()) < 1e-12:
        return None
    a = float(((x - x.mean()) * (y - y.mean())).mean() / x.var(unbiased=False))
    return a, float(y.mean() - a * x.mean())


def _levels(values: torch.Tensor) -> torch.Tensor | None:
    levels = torch.unique(values)
    return levels if len(levels) <= MAX_LEVELS else None


def _extreme(values: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor | None:
    if levels is None or len(levels) <= 2:
        return None
    return (values <= levels[0]) | (values >= levels[-1])


def _assign(observed: torch.Tensor, candidates: torch.Tensor, a: float, b: float, levels: torch.Tensor | None):
    mapped = a * candidates + b
    if levels is not None:
        snapped = levels[(mapped.unsqueeze(-1) - levels).abs().argmin(-1)]
        score = torch.cdist(observed, snapped).pow(2) + 1e-3 * torch.cdist(observed, mapped).pow(2)
    else:
        score = torch.cdist(observed, mapped)
    return score.argmin(-1)


@torch.no_grad()
def _calibrate(knowledge: Knowledge, quantizer: str, widths: dict[str, int], candidates: torch.Tensor,
               batch_size: int, generator: torch.Generator) -> tuple[float, float]:
    """Median (a, b) over auxiliary batches through the attacker's copy of the quantizer."""
    part = knowledge.client_part(quantizer, widths)
    aux = knowledge.aux
    fits = []
    order = torch.randperm(len(aux), generator=generator)
    for start in range(0, len(aux), batch_size):
        batch = aux.batch(order[start:start + batch_size])
        values = part(batch["pixel_values"], batch["input_ids"])["text"].values.reshape(-1, candidates.shape[1])
        source = candidates[batch["input_ids"].reshape(-1)]
        fit = _affine_fit(values, source, _extreme(values, _levels(values)))
        if fit is not None:
            fits.append(fit)
    if not fits:
        return 1.0, 0.0
    fits = torch.tensor(fits)
    return float(fits[:, 0].median()), float(fits[:, 1].median())


def _decode_batch(flat: torch.Tensor, padding: torch.Tensor, candidates: torch.Tensor, a: float, b: float,
                  refits: int, pad_id: int) -> tuple[torch.Tensor, float]:
    """Token ids of one batch's flattened positions and the fit's mean squared residual."""
    levels = _levels(flat)
    extreme = _extreme(flat, levels)
    for round_ in range(refits + 1):
        ids = _assign(flat, candidates, a, b, levels)
        ids[padding] = pad_id
        if round_ == refits:
            break
        fit = _affine_fit(flat, candidates[ids], extreme)
        if fit is None:
            break
        a, b = fit
    mapped = a * candidates[ids] + b
    if levels is not None:
        mapped = levels[(mapped.unsqueeze(-1) - levels).abs().argmin(-1)]
    return ids, float((flat - mapped).pow(2).mean())


def nearest_tokens(observation: Observation, knowledge: Knowledge, budget: TextBudget = TextBudget(),
                   seed: int = 0, pad_id: int = 0) -> InferredTokens:
    """See the module doc ("nearest"); cut "connector" only."""
    if knowledge.cut_layers != 0:
        raise ValueError("nearest-neighbour token recovery needs cut 'connector' (text tokens are embeddings "
                         "there); use learned_tokens at a deeper cut")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    sets = _candidate_sets(knowledge, observation.quantizer, observation.widths)
    starts = [_calibrate(knowledge, observation.quantizer, observation.widths, c, observation.batch_size,
                         torch.Generator().manual_seed(generator.initial_seed())) for c in sets]
    rows = []
    for batch in observation.batches:
        values = batch.values("text")
        n, t, d = values.shape
        flat = values.reshape(-1, d)
        padding = _padding_mask(batch.lengths, t).reshape(-1)
        fits = [_decode_batch(flat, padding, c, a, b, budget.refits, pad_id) for c, (a, b) in zip(sets, starts)]
        ids, _ = min(fits, key=lambda fit: fit[1])
        rows.append(ids.reshape(n, t))
    return _collect("nearest-token", rows, observation, started, pad_id)


def _collect(name, rows, observation, started, pad_id) -> InferredTokens:
    width = max(r.shape[1] for r in rows)
    ids = torch.cat([nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in rows])
    lengths = torch.cat([b.lengths for b in observation.batches])
    return InferredTokens(name, ids, lengths, observation.indices, time.perf_counter() - started)


def _token_inputs(values: torch.Tensor, lengths: torch.Tensor, max_positions: int) -> torch.Tensor:
    """B x T x (d + 2 P): each token vector, its position and its question's length, one-hot."""
    b, t, _ = values.shape
    position = nn.functional.one_hot(torch.arange(t).clamp(max=max_positions - 1), max_positions).float()
    length = nn.functional.one_hot(lengths.clamp(max=max_positions - 1), max_positions).float()
    return torch.cat([values, position.expand(b, t, -1), length.unsqueeze(1).expand(b, t, -1)], -1)


def learned_tokens(observation: Observation, knowledge: Knowledge, budget: TextBudget = TextBudget(),
                   seed: int = 0, pad_id: int = 0) -> InferredTokens:
    """See the module doc ("learned")."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    part = knowledge.client_part(observation.quantizer, observation.widths)
    aux = knowledge.aux
    values, targets = [], []
    with torch.no_grad():
        for _ in range(budget.passes):
            order = torch.randperm(len(aux), generator=generator)
            for start in range(0, len(aux), observation.batch_size):
                batch = aux.batch(order[start:start + observation.batch_size])
                out = part(batch["pixel_values"], batch["input_ids"])["text"].values
                real = ~_padding_mask(batch["lengths"], out.shape[1])
                values.append(_token_inputs(out, batch["lengths"], budget.max_positions)[real])
                targets.append(batch["input_ids"][real])
    values, targets = torch.cat(values), torch.cat(targets)
    vocab = knowledge.base.config.vocab_size
    with seeded(seed):
        net = nn.Sequential(nn.Linear(values.shape[1], budget.hidden), nn.GELU(), nn.Linear(budget.hidden, vocab))
    optimizer = torch.optim.AdamW(net.parameters(), lr=budget.lr, weight_decay=1e-4)
    for _ in range(budget.steps):
        idx = torch.randint(0, len(values), (budget.batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(net(values[idx]), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    rows = []
    with torch.no_grad():
        for batch in observation.batches:
            v = batch.values("text")
            ids = net(_token_inputs(v, batch.lengths, budget.max_positions)).argmax(-1)
            ids[_padding_mask(batch.lengths, v.shape[1])] = pad_id
            rows.append(ids)
    return _collect("learned-token", rows, observation, started, pad_id)


def positional_prior(knowledge: Knowledge, lengths: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """The baseline guess: per position, the auxiliary questions' most common word there."""
    aux = knowledge.aux
    width = max(int(lengths.max()), aux.input_ids.shape[1])
    ids = nn.functional.pad(aux.input_ids, (0, width - aux.input_ids.shape[1]), value=pad_id)
    real = ~_padding_mask(aux.lengths, width)
    guess = torch.full((width,), pad_id, dtype=torch.long)
    for pos in range(width):
        column = ids[real[:, pos], pos]
        if column.numel():
            guess[pos] = torch.mode(column).values
    out = guess[: int(lengths.max())].unsqueeze(0).repeat(len(lengths), 1)
    out[_padding_mask(lengths, out.shape[1])] = pad_id
    return out
