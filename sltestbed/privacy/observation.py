"""What the server observed, what the attacker knows, and what an attack returns.

    obs = record_observation(model, client_data, cut="connector", batch_size=64, seed=0)
    knowledge = Knowledge(aux=public_data, base=base_model, cut="connector")
    truth = ClientTruth.of(client_data, classes)        # for scoring only

`Observation` holds, batch by batch, exactly what crossed the link to the server for a set of
one client's training samples: the payloads per modality (their dequantized values are what
the server's learned decoder gets), the question lengths, and what the label protocol sends
(the labels, or d loss / d logits, or d loss / d hidden state). The batch grouping is kept:
the learned quantizer normalises with per-batch statistics. `indices` name the client's rows
so that an attack's output can be scored against `ClientTruth`; no attack reads them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..label_protocol import label_protocol
from ..model import ClientPart, HeadPart, ServerPart, TinyLlava, parse_cut
from ..quantizers import Payload, dequantize
from ..roles import load_client_state
from ..trainer import TensorData

LEVELS = ("public-base", "trained-quantizer", "private-base", "white-box")
QUANTIZER_PREFIX = "encoders."  # the quantizer encoders' weights in a ClientPart state dict


def quantizer_state(client_state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The quantizer encoders' weights of a client part's state (the learned quantizer's
    projections); None where there are none (uniform, fp32: nothing of the quantizer trains)."""
    state = {k: v for k, v in (client_state or {}).items() if k.startswith(QUANTIZER_PREFIX)}
    return state or None


@contextmanager
def seeded(seed: int):
    """torch's global generator seeded inside the block (module initialisation, dropout) and
    restored after it, so an attack's numbers depend on its seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- pixels <-> images ------------------------------------------------------------------
# The collator maps uint8 pixels p to (p / 255 - 0.5) / 0.5, i.e. [-1, 1]; attacks and
# metrics work on images in [0, 1].

def to_unit(pixel_values: torch.Tensor) -> torch.Tensor:
    """Model input (the collator's normalisation, [-1, 1]) -> image in [0, 1]."""
    return ((pixel_values.float() + 1.0) * 0.5).clamp(0.0, 1.0)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> model input, as the collator normalises it."""
    return images * 2.0 - 1.0


# --- what the server received -----------------------------------------------------------

@dataclass
class ObservedBatch:
    """One training batch of one client, as the server received it."""

    indices: torch.Tensor  # rows of the client's data: for scoring only
    payloads: dict[str, Payload | torch.Tensor]  # per modality, as they arrived (or their dequantized values)
    lengths: torch.Tensor  # question lengths (sent with the activations)
    labels: torch.Tensor | None = None  # labels at the server: sent with the activations
    logits: torch.Tensor | None = None  # labels at the client: what the server sent down ...
    logit_grads: torch.Tensor | None = None  # ... and d loss / d logits it got back
    hidden: torch.Tensor | None = None  # U-shaped: the server's output at the answer positions ...
    hidden_grads: torch.Tensor | None = None  # ... and d loss / d that output, from the client's head

    def __len__(self) -> int:
        return int(self.lengths.numel())

    def values(self, modality: str) -> torch.Tensor:
        """The dequantized values of one modality: what the server's learned decoder gets."""
        received = self.payloads[modality]
        return received.float() if isinstance(received, torch.Tensor) else dequantize(received)


@dataclass
class Observation:
    """Batch by batch, what the server received for a set of one client's training samples."""

    batches: list[ObservedBatch]
    quantizer: str
    widths: dict[str, int]  # bits per modality
    labels: str = "server"  # where the labels are: "server", "client" (logits down, d loss / d logits up), "u-shaped"

    def __post_init__(self):
        if not self.batches:
            raise ValueError("an observation needs at least one batch")
        label_protocol(self.labels)  # a known mode, or ValueError naming them

    @property
    def label_protocol(self):
        return label_protocol(self.labels)

    @property
    def batch_size(self) -> int:
        """The clients' batch size (the largest batch observed)."""
        return max(len(b) for b in self.batches)

    @property
    def indices(self) -> torch.Tensor:
        return torch.cat([b.indices for b in self.batches])

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    def head(self, samples: int) -> Observation:
        """The first whole batches holding at least `samples` samples (batches stay whole: the
        quantizer's statistics are per batch)."""
        kept, count = [], 0
        for b in self.batches:
            if count >= samples:
                break
            kept.append(b)
            count += len(b)
        return Observation(kept, self.quantizer, dict(self.widths), self.labels)


# --- what the attacker knows ------------------------------------------------------------

@dataclass
class Knowledge:
    """What the honest-but-curious server knows besides what it received.

    aux: auxiliary data from the clients' distribution, disjoint from every client's
        partition (the "public" slice); `aux_classes` its image classes (e.g. the digit),
        used only to train the attack classifier of the metrics.
    base: the public base model that split fine-tuning starts from (client part included).
    client_state: at level "white-box", the client part's current weights (a
        `ClientPart.state_dict()`), where the protocol sends them through the server.
    quantizer: at level "trained-quantizer", the client's trained quantizer encoders
        (`quantizer_state`: the learned quantizer's projections) on top of the base; below
        it the attacker's encoders are the base's (the identity projection).
    cut, quantizer_options: the protocol's configuration (the scheme and widths come with
        the payloads).
    """

    aux: TensorData
    base: TinyLlava
    cut: str | int = "connector"
    quantizer_options: dict = field(default_factory=dict)
    client_state: dict[str, torch.Tensor] | None = None
    level: str = "public-base"
    aux_classes: torch.Tensor | None = None
    quantizer: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.level == "white-box" and self.client_state is None:
            raise ValueError("level 'white-box' needs the client part's weights (client_state)")
        if self.level == "trained-quantizer" and not self.quantizer:
            raise ValueError("level 'trained-quantizer' needs the client's quantizer weights (quantizer)")
        stray = sorted(k for k in self.quantizer or {} if not k.startswith(QUANTIZER_PREFIX))
        if stray:
            raise ValueError(f"quantizer holds weights that are not the quantizer encoders': {stray[:3]}")
        parse_cut(self.cut, self.base.num_lm_layers)

    @property
    def cut_layers(self) -> int:
        return parse_cut(self.cut, self.base.num_lm_layers)

    def model(self, quantizer: str, widths: dict[str, int]) -> TinyLlava:
        """The attacker's copy of the model with the observed quantizers at the cut: the base
        weights, at level "trained-quantizer" the client's quantizer encoders on top, and at
        level "white-box" the client part's current weights on top."""
        config = self.base.config.replace(quantizer=quantizer, bits=max(widths.values()), modality_bits=dict(widths),
                                          quantizer_options=dict(self.quantizer_options))
        model = TinyLlava(config)
        model.load_weights(self.base.state_dict())
        if self.quantizer:
            strip = len(QUANTIZER_PREFIX)
            model.quant_encoders.load_state_dict({k[strip:]: v for k, v in self.quantizer.items()})
        if self.level == "white-box":  # the client part, and U-shaped its head
            load_client_state(model, ClientPart(model, self.cut_layers), self.client_state)
        model.eval()
        return model

    def client_part(self, quantizer: str, widths: dict[str, int]) -> ClientPart:
        """The attacker's copy of the client part (and its quantizer encoders)."""
        part = ClientPart(self.model(quantizer, widths), self.cut_layers)
        for p in part.parameters():
            p.requires_grad_(False)
        return part.eval()

    @property
    def aux_images(self) -> torch.Tensor:
        return to_unit(self.aux.pixel_values)


# --- ground truth, for scoring only -------------------------------------------------------

@dataclass
class ClientTruth:
    """The client's true samples, row by row (what `ObservedBatch.indices` point at)."""

    images: torch.Tensor  # N x C x H x W in [0, 1]
    input_ids: torch.Tensor  # N x T, right-padded
    lengths: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor | None = None  # image classes for attack accuracy (e.g. the digit)

    @classmethod
    def of(cls, data: TensorData, classes: torch.Tensor | None = None) -> ClientTruth:
        return cls(to_unit(data.pixel_values), data.input_ids, data.lengths, data.labels, classes)


# --- results ------------------------------------------------------------------------------

@dataclass
class Reconstruction:
    """Reconstructed images of observed samples."""

    attack: str
    images: torch.Tensor  # n x C x H x W in [0, 1]
    indices: torch.Tensor  # the samples' rows (from the observation)
    seconds: float = 0.0
    tuning: dict = field(default_factory=dict)  # what the attack chose on the public validation images


@dataclass
class InferredTokens:
    """Recovered question tokens of observed samples (positions >= length are padding)."""

    attack: str
    input_ids: torch.Tensor  # n x T
    lengths: torch.Tensor
    indices: torch.Tensor
    seconds: float = 0.0


@dataclass
class InferredLabels:
    """Inferred training labels (answer token ids) of observed samples."""

    attack: str
    labels: torch.Tensor  # n
    indices: torch.Tensor
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# --- recording an observation in one process ----------------------------------------------

def record_observation(model: TinyLlava, data: TensorData, *, cut: str | int = "connector", batch_size: int = 64,
                       seed: int = 0, labels: str = "server", max_samples: int | None = None) -> Observation:
    """What the server receives during one epoch of the client over `data` (seeded random
    batches, as the client draws them) with the client part's current weights, payloads as
    the quantizer encoders produce them. With labels at the client, the logits come from the
    server part and d loss / d logits from the client's cross-entropy; in the U-shaped split
    the client's head turns the server's answer-position output into the loss, and d loss /
    d output is what goes up. `max_samples`: stop after the batch that reaches it."""
    protocol = label_protocol(labels)
    k = parse_cut(cut, model.num_lm_layers)
    client = ClientPart(model, k)
    server = ServerPart(model, k, with_head=not protocol.head_on_client)
    head = HeadPart(model)
    was_training = model.training
    model.eval()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    batches = []
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        batch = data.batch(idx)
        with torch.no_grad():
            payloads = {m: q.payload for m, q in client(batch["pixel_values"], batch["input_ids"]).items()}
        observed = ObservedBatch(idx, payloads, batch["lengths"])
        if not protocol.private:
            observed.labels = batch["labels"]
        else:
            with torch.no_grad():
                out = server(dequantize(payloads["image"]), dequantize(payloads["text"]), batch["lengths"])
            leaf = out.detach().requires_grad_(True)
            logits = head(leaf) if protocol.head_on_client else leaf
            loss = nn.functional.cross_entropy(logits, batch["labels"])
            (grad,) = torch.autograd.grad(loss, leaf)
            protocol.keep(observed, out.detach(), grad)
        batches.append(observed)
        if max_samples is not None and start + len(idx) >= max_samples:
            break
    model.train(was_training)
    encoders = model.quant_encoders
    widths = {m: int(encoders[m].bits) for m in ("image", "text")}
    return Observation(batches, model.config.quantizer, widths, labels)
