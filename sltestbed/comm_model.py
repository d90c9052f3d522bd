"""The communication model: bytes per training round of every strategy, from the model's size
and the cut, without running anything. Torch-free (the analysis side may use it).

A `Workload` is what one model and one cut put on the link:

    client_params     weights of the client part as the protocol moves them (hand-over, FedAvg
                      of client parts): the ClientPart's state, quantizer encoders included
    fedavg_params     weights FedAvg moves each way per client: the whole model
    cut_elements      {modality: elements per sample} crossing up (activations); the same
                      count comes back down (their gradients)
    label_elements    labels per sample sent up with the activations (labels at the server)

A `Round` is how a round is run: samples per client per round (local epochs x partition),
clients, the server batch, and the widths: activation bits up, gradient bits down, weight bits
(model hand-overs and FedAvg), label bits.

`round_bytes(strategy, workload, round)` gives {(direction, kind): ideal bytes} for one
round's training traffic, counted payload by payload as the ledger does (ideal bytes of a
payload = ceil(elements x bits / 8); one payload per modality per step per client, one label
list per step per client, one weight payload per model message):

    parallel     activations up, gradients down; client batch ceil(B / K); no weights
    sequential   the same per sample with client batch B, plus the client part handed from
                 client to client: K hand-overs a round (the part goes once around the ring:
                 up from its holder, down to the next), client_params each way each
    splitfed-v1  per sample as sequential; the client parts averaged each round: K up, K down
    splitfed-v2  as splitfed-v1 (the server-side copies of v1 never cross the link)
    local-loss   activations and labels up, one payload per modality per client a round (the
                 round's samples); no gradients, no weights
    fedavg       the whole model down and up per client per round, nothing per sample

Not modelled: config messages (a few integers per message: the step's meta, batch lengths),
evaluation traffic, and round trips. `payload_overheads` gives the codec's header bytes per
payload (38 for a 3-D single-field payload: learned, fsq codes and fp32/fp16 values), the part
of the serialized size that the ideal bytes leave out, before the record's own framing.

`crossover_samples` solves for the samples per client per round at which a split strategy
sends as many bytes as FedAvg, `crossover_model_size` for the model size (server parameters
grown, client part and cut fixed) at which they are equal; both on the continuous form
(bytes per sample x samples + weight bytes), which the exact count differs from only by the
rounding of the last byte of each payload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SPLIT_STRATEGIES = ("sequential", "splitfed-v1", "splitfed-v2", "parallel", "local-loss")
ONE_MESSAGE_A_ROUND = ("local-loss",)  # the round's activations in one payload, no gradients down
UNSYNCHRONISED = ("parallel", "local-loss")  # client batches of B / K; the client parts never exchanged
STRATEGIES = SPLIT_STRATEGIES + ("fedavg",)
CODEC_HEADER_BYTES = 38  # `sltestbed.codec.header_size(3, 0, 1)`: a 3-D payload, no parameters, one field
MAX_BITS = 32


def _check_bits(name: str, bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be an integer in 1..{MAX_BITS}, got {bits!r}")


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Workload:
    client_params: int
    fedavg_params: int
    cut_elements: dict = field(default_factory=dict)  # modality -> elements per sample (up, and down as gradients)
    label_elements: int = 1

    def __post_init__(self):
        _check_count("client_params", self.client_params, 0)
        _check_count("fedavg_params", self.fedavg_params, 1)
        _check_count("label_elements", self.label_elements, 0)
        if not self.cut_elements:
            raise ValueError("cut_elements is empty: give the elements per sample of at least one modality")
        for modality, n in self.cut_elements.items():
            _check_count(f"cut_elements[{modality!r}]", n, 1)

    @property
    def elements_per_sample(self) -> int:
        return sum(self.cut_elements.values())

    def with_server_params(self, server_params: float) -> "Workload":
        """The same client part and cut with a server part of `server_params` weights."""
        return Workload(self.client_params, max(1, round(self.client_params + server_params)),
                        dict(self.cut_elements), self.label_elements)


@dataclass(frozen=True)
class Round:
    samples_per_client: int
    clients: int
    batch_size: int = 64  # the server batch B (parallel: split over the clients)
    activation_bits: int = 2
    gradient_bits: int = 32
    weight_bits: int = 32
    label_bits: int = 32

    def __post_init__(self):
        _check_count("samples_per_client", self.samples_per_client, 1)
        _check_count("clients", self.clients, 1)
        _check_count("batch_size", self.batch_size, 1)
        for name in ("activation_bits", "gradient_bits", "weight_bits", "label_bits"):
            _check_bits(name, getattr(self, name))

    def client_batch(self, strategy: str) -> int:
        return math.ceil(self.batch_size / self.clients) if strategy in UNSYNCHRONISED else self.batch_size

    def batches(self, strategy: str) -> list[int]:
        """Sizes of one client's payloads in a round: its batches (the last one partial), or
        local-loss's one payload of the round's samples."""
        if strategy in ONE_MESSAGE_A_ROUND:
            return [self.samples_per_client]
        b = self.client_batch(strategy)
        full, rest = divmod(self.samples_per_client, b)
        return [b] * full + ([rest] if rest else [])


def _payload_bytes(elements: int, bits: int) -> int:
    return math.ceil(elements * bits / 8)


def round_bytes(strategy: str, workload: Workload, rnd: Round) -> dict[tuple[str, str], int]:
    """{(direction, kind): ideal bytes} of one round's training traffic, all clients together
    (kinds as in the ledger: activations, gradients, labels, model)."""
    _check_strategy(strategy)
    out = {("up", "activations"): 0, ("down", "gradients"): 0, ("up", "labels"): 0,
           ("up", "model"): 0, ("down", "model"): 0}
    if strategy == "fedavg":
        whole = _payload_bytes(workload.fedavg_params, rnd.weight_bits)
        out[("up", "model")] = out[("down", "model")] = rnd.clients * whole
        return out
    for b in rnd.batches(strategy):
        for n in workload.cut_elements.values():
            out[("up", "activations")] += rnd.clients * _payload_bytes(b * n, rnd.activation_bits)
            if strategy not in ONE_MESSAGE_A_ROUND:
                out[("down", "gradients")] += rnd.clients * _payload_bytes(b * n, rnd.gradient_bits)
        if workload.label_elements:
            out[("up", "labels")] += rnd.clients * _payload_bytes(b * workload.label_elements, rnd.label_bits)
    if strategy not in UNSYNCHRONISED:  # K hand-overs (sequential) or K parts averaged (splitfed)
        part = _payload_bytes(workload.client_params, rnd.weight_bits)
        out[("up", "model")] = out[("down", "model")] = rnd.clients * part
    return out


def payload_overheads(strategy: str, workload: Workload, rnd: Round) -> dict[tuple[str, str], int]:
    """{(direction, kind): codec header bytes} of the round's activation and gradient payloads:
    `CODEC_HEADER_BYTES` per payload (one per modality per step per client)."""
    _check_strategy(strategy)
    payloads = 0 if strategy == "fedavg" else rnd.clients * len(rnd.batches(strategy)) * len(workload.cut_elements)
    down = 0 if strategy in ONE_MESSAGE_A_ROUND else payloads
    return {("up", "activations"): payloads * CODEC_HEADER_BYTES, ("down", "gradients"): down * CODEC_HEADER_BYTES}


def total_bytes(strategy: str, workload: Workload, rnd: Round) -> int:
    """All of one round's modelled training bytes, up and down."""
    return sum(round_bytes(strategy, workload, rnd).values())


# --- the continuous form: per-sample bytes and weight bytes -----------------------------------
def bytes_per_sample(workload: Workload, activation_bits: int, gradient_bits: int = 32, label_bits: int = 32,
                     strategy: str = "parallel") -> float:
    """Bytes up and down per training sample of a split strategy (activations, their
    gradients but for local-loss, the labels), before the last-byte rounding of each payload."""
    for name, bits in (("activation_bits", activation_bits), ("gradient_bits", gradient_bits),
                       ("label_bits", label_bits)):
        _check_bits(name, bits)
    _check_strategy(strategy)
    q = workload.elements_per_sample
    down = 0 if strategy in ONE_MESSAGE_A_ROUND else gradient_bits
    return (q * (activation_bits + down) + workload.label_elements * label_bits) / 8


def weight_bytes_per_round(strategy: str, workload: Workload, clients: int, weight_bits: int = 32) -> float:
    """Weight bytes of a round, up and down: the client part K times each way (sequential,
    splitfed), the whole model K times each way (FedAvg), none (parallel, local-loss)."""
    _check_strategy(strategy)
    _check_count("clients", clients)
    _check_bits("weight_bits", weight_bits)
    params = {"parallel": 0, "local-loss": 0, "fedavg": workload.fedavg_params}.get(strategy, workload.client_params)
    return 2 * clients * params * weight_bits / 8


def crossover_samples(strategy: str, workload: Workload, clients: int, activation_bits: int,
                      gradient_bits: int = 32, weight_bits: int = 32, label_bits: int = 32) -> float:
    """Samples per client per round at which `strategy` sends as many bytes as FedAvg (fewer
    samples: split sends fewer). 0 when FedAvg never sends more (a client part as large as
    the model)."""
    if strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"crossover_samples compares a split strategy with FedAvg: choose one of "
                         f"{', '.join(SPLIT_STRATEGIES)}, got {strategy!r}")
    gap = (weight_bytes_per_round("fedavg", workload, clients, weight_bits)
           - weight_bytes_per_round(strategy, workload, clients, weight_bits))
    per_sample = clients * bytes_per_sample(workload, activation_bits, gradient_bits, label_bits, strategy)
    return max(0.0, gap / per_sample)


def crossover_model_size(strategy: str, workload: Workload, rnd: Round) -> float:
    """Whole-model parameters (client part and cut of `workload` fixed, server part grown) at
    which `strategy`'s round sends as many bytes as FedAvg's. A split round's bytes do not
    depend on the server part; FedAvg's grow with the whole model."""
    if strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"crossover_model_size compares a split strategy with FedAvg: choose one of "
                         f"{', '.join(SPLIT_STRATEGIES)}, got {strategy!r}")
    split = (rnd.clients * rnd.samples_per_client
             * bytes_per_sample(workload, rnd.activation_bits, rnd.gradient_bits, rnd.label_bits, strategy)
             + weight_bytes_per_round(strategy, workload, rnd.clients, rnd.weight_bits))
    fedavg_per_param = 2 * rnd.clients * rnd.weight_bits / 8
    return split / fedavg_per_param
