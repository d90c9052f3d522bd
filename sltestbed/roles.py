"""Split-learning roles: what the client and the server each compute in a training step.

Flower-free: a transport (the Flower app, or a test in one process) moves the payloads. The
roles take and return payloads (codes and side information, as they cross the link); each
side dequantizes what it receives itself.

    client.forward()                    -> Activations (a Payload per modality, lengths), labels
    server.forward([activations...])    -> outputs per client (graph kept): logits, or U-shaped the
                                           hidden state at the answer position
      labels at the server:  server.backward_from_labels([labels...])     -> gradient payloads per client
      labels at the client:  client.loss_and_grad(outputs)                -> loss, d loss / d outputs
      (and U-shaped, where the client's head turns the hidden state into logits and steps)
                             server.backward_from_output_grads([grads])   -> gradient payloads per client
    client.backward(gradient payloads)  -> the client part steps

Local-loss split learning (no gradient comes down): the client trains against its own head,

    client.local_round(steps)           -> its local loss, the round's Activations, their labels
    server.train_on(values, lengths, labels)  -> the server part steps on what came up

Each side has its own AdamW and schedule over the parameters it holds; per-parameter
optimizers, so the pair trains exactly like one optimizer over the whole model. Each side
computes on its own device and precision (`compute.Compute`); what it returns for the link
is on the CPU.
"""

from __future__ import annotations

import copy
import io
from typing import NamedTuple

import torch
from torch import nn

from .compute import CPU, Compute, to_host
from .model import MODALITIES, ClientPart, HeadPart, LocalHead, ServerPart, TinyLlava
from .quantizers import GRADIENT_SCHEMES, Payload, build_quantizer, dequantize
from .averaging import load_trained
from .trainer import BatchCursor, OptimConfig, TensorData, Updates, set_trainable


class Activations(NamedTuple):
    """One client's batch at the cut, as it crosses the link: a payload per modality, and the
    question lengths (where each sample's answer position is)."""

    payloads: dict[str, Payload]
    lengths: torch.Tensor


def gradient_encoder(scheme: str, bits: int | None, seed: int = 0):
    """Quantizer for gradients sent down: no learned part; uniform rounds stochastically."""
    if scheme not in GRADIENT_SCHEMES:
        raise ValueError(f"gradient quantizer {scheme!r} not allowed: choose one of {', '.join(GRADIENT_SCHEMES)}")
    options = {"stochastic": True, "seed": seed} if scheme == "uniform" else {}
    return build_quantizer(scheme, bits, **options)[0]


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class ClientRole:
    """`head`: the U-shaped split, where the language model's head (and the loss) stays here:
    the server sends its hidden state at the answer position, the head turns it into logits.
    `local_head`: local-loss split learning, where the part trains against an auxiliary head of
    its own (`LocalHead`, seeded by `seed_head`) and no gradient comes down."""

    def __init__(self, model: TinyLlava, cut_layers: int, data: TensorData, *, batch_size: int, seed: int,
                 optim: OptimConfig, trainable=("vision", "connector", "quantizers", "lm"),
                 distortion_weight: float = 0.0, head: bool = False, local_head: bool = False,
                 seed_head: int = 0, compute: Compute = CPU):
        set_trainable(model, trainable)
        self.compute = compute
        self.model = model.to(compute.device)
        self.part = ClientPart(model, cut_layers)
        self.head = HeadPart(model) if head else None
        self.local = LocalHead(model.lm_hidden, model.lm.lm_head.out_features, seed_head).to(compute.device) \
            if local_head else None
        self.data = data
        self.cursor = BatchCursor(len(data), batch_size, seed)
        self.updates = Updates(optim, _trainable(self.part) + (_trainable(self.local) if local_head else []))
        self.head_updates = Updates(optim, _trainable(self.head) if head else [])
        self.distortion_weight = distortion_weight
        self.pending = None  # (batch rows, quantizer outputs) of the forward awaiting its gradient
        self.steps = 0
        # bumped by every change to what `state_bytes` saves: a holder saves only when it moved
        self.revision = 0

    # --- training -------------------------------------------------------------------------
    def forward(self) -> tuple[Activations, torch.Tensor]:
        """The next batch's activations, and its labels."""
        idx = self.cursor.next()
        return self._forward(idx)

    def _forward(self, idx: torch.Tensor) -> tuple[Activations, torch.Tensor]:
        """(the batch's activations, its labels)."""
        batch = self.data.batch(idx)
        self.part.train()
        with self.compute.autocast():
            outs = self.part(self.compute.here(batch["pixel_values"]), self.compute.here(batch["input_ids"]))
        self.pending = (idx, outs, batch)
        self.revision += 1
        return Activations({m: o.payload.to("cpu") for m, o in outs.items()}, batch["lengths"]), batch["labels"]

    def backward(self, gradients: dict[str, Payload]) -> None:
        """Apply d loss / d (dequantized values) per modality (as the payloads the server sent)
        through the straight-through estimator, plus this side's distortion loss, and step."""
        if self.pending is None:
            raise RuntimeError("client received a gradient but has no forward pass waiting for one")
        _, outs, _ = self.pending
        gradients = {m: self.compute.here(dequantize(p)) for m, p in gradients.items()}
        for m, g in gradients.items():
            if g.shape != outs[m].values.shape:
                raise ValueError(f"gradient for {m} has shape {tuple(g.shape)}, activations {tuple(outs[m].values.shape)}")
        surrogate = sum((outs[m].values * gradients[m].to(outs[m].values.dtype)).sum() for m in gradients)
        surrogate = surrogate + self.distortion_weight * sum(o.loss for o in outs.values())
        self.updates.zero_grad()
        if surrogate.requires_grad:
            surrogate.backward()
        self.updates.step()
        self.pending = None
        self.steps += 1
        self.revision += 1

    def local_round(self, steps: int) -> tuple[float, Activations, torch.Tensor]:
        """Local-loss split learning: `steps` batches, each a step of the part (and the local
        head) on the head's loss over the values the server will receive (straight-through to
        the encoders) plus the distortion loss; then the round's rows, in the order they were
        trained, encoded once by the part as it ends the round (as an evaluation encodes its
        shard). Returns (the mean local loss, the round's activations, their labels)."""
        if self.local is None:
            raise RuntimeError("a local round needs the local head (local-loss split learning)")
        if steps < 1:
            raise ValueError(f"a local round needs at least one step, got {steps}")
        rows, losses = [], []
        self.part.train()
        self.local.train()
        for _ in range(steps):
            idx = self.cursor.next()
            batch = self.data.batch(idx)
            with self.compute.autocast():
                outs = self.part(self.compute.here(batch["pixel_values"]), self.compute.here(batch["input_ids"]))
                logits = self.local(outs["image"].values, outs["text"].values, batch["lengths"])
            loss = nn.functional.cross_entropy(logits.float(), self.compute.here(batch["labels"]))
            self.updates.zero_grad()
            (loss + self.distortion_weight * sum(o.loss for o in outs.values())).backward()
            self.updates.step()
            rows.append(idx)
            losses.append(float(loss.detach()))
            self.steps += 1
        self.revision += 1
        acts, batch = self.encode(self.data, torch.cat(rows))
        return sum(losses) / len(losses), acts, batch["labels"]

    def drop_pending(self) -> None:
        """Forget the forward awaiting a gradient (the server left this client out of that step)."""
        if self.pending is not None:
            self.pending = None
            self.revision += 1

    def loss_and_grad(self, output: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Labels kept here: the loss of this client's batch and its gradient w.r.t. what the
        server sent (its logits; U-shaped, its hidden state, which the head here turns into
        logits, and the head steps)."""
        if self.pending is None:
            raise RuntimeError("client received the server's output but has no forward pass waiting")
        labels = self.compute.here(self.pending[2]["labels"])
        leaf = self.compute.here(output.detach().float()).requires_grad_(True)
        if self.head is None:
            loss = nn.functional.cross_entropy(leaf, labels)
            loss.backward()
            return float(loss.detach()), to_host(leaf.grad)
        self.head.train()
        with self.compute.autocast():
            logits = self.head(leaf)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        self.head_updates.zero_grad()
        loss.backward()
        self.head_updates.step()
        self.revision += 1
        return float(loss.detach()), to_host(leaf.grad)

    @torch.no_grad()
    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """The answer logits of the server's output (U-shaped: through the head here)."""
        if self.head is None:
            return output
        self.head.eval()
        with self.compute.autocast():
            return to_host(self.head(self.compute.here(output.float())).float())

    # --- evaluation -----------------------------------------------------------------------
    def evaluate_forward(self, data: TensorData) -> tuple[Activations, dict]:
        """Quantized features of a whole evaluation shard, and the shard's batch (labels and
        question types)."""
        return self.encode(data, torch.arange(len(data)))

    @torch.no_grad()
    def encode(self, data: TensorData, idx: torch.Tensor) -> tuple[Activations, dict]:
        """Quantized features of `data`'s rows `idx` in one payload per modality (evaluation
        mode), and their batch."""
        self.part.eval()
        batch = data.batch(idx)
        with self.compute.autocast():
            outs = self.part(self.compute.here(batch["pixel_values"]), self.compute.here(batch["input_ids"]))
        return Activations({m: o.payload.to("cpu") for m, o in outs.items()}, batch["lengths"]), batch

    # --- state ----------------------------------------------------------------------------
    def _trainable_tensors(self) -> dict[str, torch.Tensor]:
        """What of `part_state` can change in training, uncopied: the trainable parameters and
        the buffers (the frozen parameters stay the base's, from which every role is built)."""
        tensors = {}
        for prefix, module in (("", self.part), ("head.", self.head), (LOCAL_PREFIX, self.local)):
            if module is None:
                continue
            frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
            tensors.update({f"{prefix}{k}": v for k, v in module.state_dict().items() if k not in frozen})
        return tensors

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What of `part_state` can change in training (`_trainable_tensors`), copied to the CPU."""
        return {k: to_host(v) for k, v in self._trainable_tensors().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a `trainable_state` (ValueError on a tensor this role does not train)."""
        stray = sorted(set(state) - set(self._trainable_tensors()))
        if stray:
            raise ValueError(f"the saved state holds tensors this role does not train: {stray[:3]}")
        self.load_part_state(state)

    def state_bytes(self) -> bytes:
        """The node state: what trains (`trainable_state`), the optimizers, the batch cursor,
        the rows of a pending forward. Bounded by the trainable tensors, not the model."""
        buf = io.BytesIO()
        torch.save({"part": self.trainable_state(), "updates": self.updates.state_dict(),
                    "head_updates": self.head_updates.state_dict(), "cursor": self.cursor.state(),
                    "pending": None if self.pending is None else self.pending[0], "steps": self.steps}, buf)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
        self.load_trainable_state(state["part"])
        self.updates.load_state_dict(state["updates"])
        self.head_updates.load_state_dict(state["head_updates"])
        self.cursor.load_state(state["cursor"])
        self.steps = state["steps"]
        self.pending = None
        if state["pending"] is not None:  # rebuild the graph the gradient will flow through
            self._forward(state["pending"])

    def part_state(self) -> dict[str, torch.Tensor]:
        """The weights this side holds: the client part (U-shaped, the head too, as head.*;
        local-loss, the local head as local.*)."""
        state = {k: to_host(v) for k, v in self.part.state_dict().items()}
        for prefix, module in (("head.", self.head), (LOCAL_PREFIX, self.local)):
            if module is not None:
                state.update({f"{prefix}{k}": to_host(v) for k, v in module.state_dict().items()})
        return state

    def load_part_state(self, state: dict[str, torch.Tensor]) -> None:
        load_client_state(self.model, self.part, state)
        local = {k[len(LOCAL_PREFIX):]: v for k, v in state.items() if k.startswith(LOCAL_PREFIX)}
        if local:
            if self.local is None:
                raise ValueError(f"the state holds a local head ({sorted(local)[:2]}), this role has none")
            self.local.load_state_dict(local)
        self.revision += 1


LOCAL_PREFIX = "local."  # the local head's weights in a client's state: the client's own, in no model


def load_client_state(model: TinyLlava, part: ClientPart, state: dict[str, torch.Tensor]) -> None:
    """Load a client's weights (`ClientRole.part_state`, or what trains of it as the protocol
    moves it, `trainable_state`: the client part, and the head's head.* where it has one) into
    `part` of `model`; weights the state does not hold keep their values (the base's). A local
    head's local.* belong to no model and are left out."""
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    load_trained(part, {k: v for k, v in state.items() if not k.startswith(("head.", LOCAL_PREFIX))})
    if head:
        load_trained(HeadPart(model), head)


class ServerRole:
    def __init__(self, model: TinyLlava, cut_layers: int, *, optim: OptimConfig,
                 trainable=("vision", "connector", "quantizers", "lm"), grad_scheme: str = "fp32",
                 grad_bits: int | None = None, seed: int = 0, head: bool = True, compute: Compute = CPU):
        set_trainable(model, trainable)
        self.compute = compute
        self.model = model.to(compute.device)
        self.part = ServerPart(model, cut_layers, with_head=head)
        self.updates = Updates(optim, _trainable(self.part))
        self.grad_encoder = gradient_encoder(grad_scheme, grad_bits, seed)
        self.inputs = None
        self.logits = None
        self.steps = 0

    @property
    def cut_shape(self) -> tuple[int, int]:
        """(image tokens, values per token) of the activations this server part takes."""
        return self.model.config.image_tokens, self.model.lm_hidden

    def forward(self, inputs: list[Activations]) -> list[torch.Tensor]:
        """Every client's activations in one batch, one forward; returns each client's logits
        slice (the graph is kept for the backward)."""
        self.part.train()
        leaves = [{m: self.compute.here(dequantize(x.payloads[m]).detach().float()).requires_grad_(True)
                   for m in MODALITIES} for x in inputs]
        with self.compute.autocast():
            logits = self._logits(leaves, inputs).float()
        self.inputs, self.logits = leaves, logits
        return list(to_host(logits).split([len(x.lengths) for x in inputs]))

    def _logits(self, leaves, inputs: list[Activations]) -> torch.Tensor:
        text_len = max(x["text"].shape[1] for x in leaves)
        image = torch.cat([x["image"] for x in leaves])
        text = torch.cat([nn.functional.pad(x["text"], (0, 0, 0, text_len - x["text"].shape[1])) for x in leaves])
        lengths = self.compute.here(torch.cat([x.lengths for x in inputs]))
        return self.part(image, text, lengths)

    def train_on(self, values: list[dict[str, torch.Tensor]], lengths: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> float:
        """Local-loss split learning: one step of the server part on dequantized activations
        that came up (each client's slice of a round's upload), with their labels; nothing
        goes back. Returns the step's loss."""
        self.part.train()
        leaves = [{m: self.compute.here(v[m]).float() for m in MODALITIES} for v in values]
        with self.compute.autocast():
            logits = self._logits(leaves, [Activations({}, n) for n in lengths]).float()
        loss = nn.functional.cross_entropy(logits, self.compute.here(torch.cat(labels)))
        self._step(loss)
        return float(loss.detach())

    def backward_from_labels(self, labels: list[torch.Tensor]) -> tuple[float, list[Payload]]:
        loss = nn.functional.cross_entropy(self.logits, self.compute.here(torch.cat(labels)))
        self._step(loss)
        return float(loss.detach()), self._gradients()

    def backward_from_output_grads(self, dlogits: list[torch.Tensor | None]) -> list[Payload | None]:
        """Each client's d L_k / d output_k (its logits, or U-shaped its hidden state); the
        loss is sum_k (b_k / B) L_k over the clients that answered (None: a client whose loss
        never came; it contributes nothing and gets no gradient)."""
        slices = self.logits.detach().split([x["image"].shape[0] for x in self.inputs])
        total = sum(g.shape[0] for g in dlogits if g is not None)
        grad = torch.cat([torch.zeros_like(s) if g is None else self.compute.here(g) * (g.shape[0] / total)
                          for s, g in zip(slices, dlogits)])
        self._step(None, grad)
        return [None if g is None else p for g, p in zip(dlogits, self._gradients())]

    def _step(self, loss, grad=None) -> None:
        self.updates.zero_grad()
        if loss is not None:
            loss.backward()
        else:
            self.logits.backward(grad)
        self.updates.step()
        self.steps += 1

    def _gradients(self) -> list[Payload]:
        """d loss / d (dequantized values), per client and modality, quantized for the way down."""
        grads = [{m: self.grad_encoder.encode(leaf[m].grad).to("cpu") for m in MODALITIES} for leaf in self.inputs]
        self.inputs, self.logits = None, None
        return grads

    @torch.no_grad()
    def predict(self, inputs: list[Activations]) -> list[torch.Tensor]:
        self.part.eval()
        leaves = [{m: self.compute.here(dequantize(x.payloads[m]).float()) for m in MODALITIES} for x in inputs]
        with self.compute.autocast():
            logits = to_host(self._logits(leaves, inputs).float())
        return list(logits.split([len(x.lengths) for x in inputs]))

    def part_state(self) -> dict[str, torch.Tensor]:
        return {k: to_host(v) for k, v in self.part.state_dict().items()}

    def load_part_state(self, state: dict[str, torch.Tensor]) -> None:
        self.part.load_state_dict(state)

    def state(self) -> dict:
        """What a checkpoint keeps of this side: its part's weights, the optimizer and its
        schedule, the step count, the gradient quantizer's random stream."""
        return {"part": self.part_state(), "updates": self.updates.state_dict(), "steps": self.steps,
                "grad_random": self.grad_encoder.random_state()}

    def load_state(self, state: dict) -> None:
        self.load_part_state(state["part"])
        self.updates.load_state_dict(state["updates"])
        self.steps = state["steps"]
        self.grad_encoder.load_random_state(state["grad_random"])

    def copy(self) -> "ServerRole":
        """An independent server-part copy (SplitFed v1: one per client)."""
        return copy.deepcopy(self)
