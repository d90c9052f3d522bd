"""The experiment configuration: every run-config key, its default, what it may be.

The one source of defaults: the Flower app's `[tool.flwr.app.config]` in pyproject.toml
lists the same keys with the same values (a test holds them equal), and the
`python -m sltestbed.train` command takes its defaults from here too.

Flower-free: `ExperimentConfig.from_run_config(context.run_config)` is all the apps need.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import asdict, dataclass, fields, replace

from .label_protocol import LABELS, label_protocol

# The name tables (schemes, presets, partitioners, ...) live beside code that imports torch and
# transformers: imported where used, so key names and types are checked before any of that loads.
MODALITIES = ("image", "text")  # the model's (sltestbed.model.MODALITIES, held equal by a test)

HF_DATASET_KEYS = ("dataset_split", "image_column", "question_column", "answer_column", "type_column", "max_samples")
# Run-config keys that say where a run's files go or which are written or read, not what it computes
LOCATION_KEYS = ("output-dir", "run-name", "cache-dir", "tensorboard", "checkpoint", "resume")

STRATEGIES = ("sequential", "splitfed-v1", "splitfed-v2", "parallel", "local-loss", "fedavg")
ATTACKS = ("none", "inversion", "all")  # after training: none; lookups, code classifier, decoders, tokens, labels; and optimisation
# the testing hook: the ClientApp raises, answers too late, its process dies, or it sends activations whose
# header lies about their shape (a consistent payload with a valid checksum)
FAULTS = ("raise", "stall", "kill", "lie")
BASE_DELIVERIES = ("path", "flower")  # clients read `base` (shared disk) / get their part once (sltestbed.base_delivery)
CACHE_DIR = os.path.join(".cache", "sltestbed")  # where base models are cached (relative: to the working directory)


@dataclass(frozen=True)
class ExperimentConfig:
    strategy: str = "parallel"
    quantizer: str = "learned"
    bits: int | str = 2  # 0: implied by the quantizer (fp32 32, fp16 / bf16 16); "auto": chosen by calibration
    image_bits: int = 0  # a width for one modality (0: `bits`); with bits="auto", calibration sets them
    text_bits: int = 0
    auto_batches: int = 8  # bits="auto": calibration batches per client
    auto_max_rel_mse: float = 0.05  # bits="auto": the distortion budget (MSE / variance of the normalised features)
    grad_quantizer: str = "fp32"
    grad_bits: int = 0
    entropy_coding: bool = False
    dataset: str = "digits-vqa"
    # a Hugging Face data set (dataset = "hf:<local directory or hub name>"): which split, which columns
    dataset_split: str = "train"
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answer"
    type_column: str = ""  # the question type of each row ("": one type, "all")
    max_samples: int = 0  # the first rows only (0: all)
    preset: str = "tiny"
    model: str = ""  # a named recipe of Hugging Face parts (model.pretrained.RECIPES), e.g. tinyllava-qwen2-0.5b
    vision_model: str = ""  # a Hugging Face vision tower (local directory or hub name; "" the preset's)
    language_model: str = ""  # a Hugging Face causal LM with the Llama layout, and its tokenizer ("" the preset's)
    vision_feature_layer: int = 0  # the tower's hidden state the connector reads (-2: TinyLLaVA's; 0: the preset's)
    lora_rank: int = 0  # LoRA adapters of this rank on the language model (0: none); the adapted weights freeze
    lora_alpha: int = 0  # the adapters' scale is alpha / rank (0: alpha = 2 x rank)
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # the decoder's layers to adapt
    lora_parts: str = "lm"  # "lm,vision": adapters on the tower's linear layers too
    device: str = "auto"  # where the roles compute: auto (a GPU where there is one), cpu, cuda, cuda:i
    precision: str = "fp32"  # the forward's precision: fp32, or bf16 autocast (the codes are fp32 either way)
    cut: str = "connector"
    labels: str = "server"
    num_rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    partitioner: str = "iid"
    alpha: float = 0.5
    partition_by: str = "answer"  # the column a non-iid partitioner splits by: answer or qtype
    fraction: float = 1.0
    test_fraction: float = 0.2  # of the images: the held-out split, sharded among the clients for evaluation
    public_fraction: float = 0.2  # of the images: the attacker's public pool, in no client's data (`splits`)
    train_modules: str = "connector,quantizers,lm"
    distortion_weight: float = 0.25
    base: str = "auto"
    base_delivery: str = "path"  # how the clients get the base: path (they read `base` themselves) or flower (sent once)
    base_epochs: int = 60  # the base model's recipe: also `python -m sltestbed.train`'s centralized reference
    base_lr: float = 3e-3
    base_batch_size: int = 64
    step_timeout: float = 120.0
    max_failed_steps: int = 10  # the most client messages a run may lose (failed or unanswered); one more stops it
    fault: str = ""  # testing hook: "raise:P:R:S", "stall:P:R:S", "kill:P:R:S" or "lie:P:R:S" (partition, round, step)
    benchmark_roundtrips: int = 0  # N > 0: N bare Flower round trips after training, to compare a step with
    save_model: bool = False  # write the trained model (server part + a client's part) to <run>/model
    attack: str = "none"  # after training, attacks on what the server received: none, inversion, all
    public_size: int = 300  # images of the public slice the attacker knows (drawn from the public pool)
    attack_samples: int = 512  # training samples the server keeps for the attacks (whole batches, seeded)
    attack_steps: int = 1500  # the decoders' most optimizer steps (the same at every width)
    tensorboard: bool = False  # per-step and per-round figures for TensorBoard in <run>/tensorboard
    checkpoint: bool = True  # after every round, <run>/checkpoint.pt (removed once the results are written)
    resume: bool = False  # go on from <run>/checkpoint.pt, a killed run's last completed round
    output_dir: str = "results"
    run_name: str = ""
    cache_dir: str = CACHE_DIR

    def __post_init__(self):
        """A `model` recipe fills the Hugging Face keys left at their defaults."""
        if self.model:
            from .model.pretrained import RECIPES

            if self.model not in RECIPES:
                raise ValueError(f"run config 'model' = {self.model!r} is not a recipe; recipes: {', '.join(RECIPES)}")
            for key, value in RECIPES[self.model].items():
                name = key.replace("-", "_")
                if not getattr(self, name):
                    object.__setattr__(self, name, value)

    # --- construction and validation -----------------------------------------------------
    @classmethod
    def from_run_config(cls, run_config: dict) -> "ExperimentConfig":
        """From Flower's run config (hyphenated keys); unknown keys and bad values raise
        ValueError naming the key and what it may be."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hints = "".join(f" ('{k}': did you mean '{m[0]}'?)" for k, m in close.items() if m)
            raise ValueError(f"unknown run-config key(s) {unknown}{hints}; known keys: {', '.join(sorted(known))}")
        values = {}
        for key, value in run_config.items():
            f = known[key]
            kind = type(f.default)
            if key == "bits" and value == "auto":
                values[f.name] = value
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"run config '{key}' = {value!r} must be of type {kind.__name__}")
            values[f.name] = value
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .compute import PRECISIONS, check_device
        from .data.partition import PARTITIONERS
        from .model import PRESETS, parse_cut
        from .quantizers import AUTO_BITS_SCHEMES, GRADIENT_SCHEMES, SCHEMES
        from .model.groups import MODULE_GROUPS

        def choose(key, value, allowed):
            if value not in allowed:
                raise ValueError(f"run config '{key}' = {value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")

        def at_least(key, value, low):
            if value < low:
                raise ValueError(f"run config '{key}' = {value!r} is out of range: must be >= {low}")

        choose("strategy", self.strategy, STRATEGIES)
        choose("quantizer", self.quantizer, SCHEMES)
        choose("grad-quantizer", self.grad_quantizer, GRADIENT_SCHEMES)
        choose("labels", self.labels, LABELS)
        choose("preset", self.preset, tuple(PRESETS))
        choose("partitioner", self.partitioner, tuple(PARTITIONERS))
        if self.auto_bits:
            if self.quantizer not in AUTO_BITS_SCHEMES:
                raise ValueError(f"run config 'bits' = 'auto' needs a quantizer that normalises its features: "
                                 f"{', '.join(AUTO_BITS_SCHEMES)} (quantizer is {self.quantizer!r})")
            if self.strategy == "fedavg":
                raise ValueError("run config 'bits' = 'auto' chooses the widths at the cut; strategy 'fedavg' has no cut")
            at_least("auto-batches", self.auto_batches, 1)
            if not 0 < self.auto_max_rel_mse < 1:
                raise ValueError(f"run config 'auto-max-rel-mse' = {self.auto_max_rel_mse} is out of range: "
                                 "must be in (0, 1)")
        checks = [("grad-bits", self.grad_quantizer, self.grad_bits)]
        checks += [] if self.auto_bits else [("bits", self.quantizer, self.bits)]
        checks += [(f"{m}-bits", self.quantizer, getattr(self, f"{m}_bits")) for m in MODALITIES
                   if getattr(self, f"{m}_bits")]
        for key, name, value in checks:
            if isinstance(value, str):
                raise ValueError(f"run config '{key}' = {value!r}: use an integer (or 'auto' for bits)")
            try:
                _width(name, value)
            except ValueError as exc:
                raise ValueError(f"run config '{key}' = {value}: {exc}") from None
        for key in ("num-rounds", "local-epochs", "batch-size", "base-epochs", "base-batch-size"):
            at_least(key, getattr(self, key.replace("-", "_")), 1)
        at_least("seed", self.seed, 0)
        at_least("max-failed-steps", self.max_failed_steps, 0)
        for key in ("lr", "base-lr", "step-timeout", "alpha"):
            if not getattr(self, key.replace("-", "_")) > 0:
                raise ValueError(f"run config '{key}' = {getattr(self, key.replace('-', '_'))} is out of range: must be > 0")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"run config 'fraction' = {self.fraction} is out of range: must be in (0, 1]")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"run config 'test-fraction' = {self.test_fraction} is out of range: must be in (0, 1)")
        if not 0 < self.public_fraction < 1 or self.test_fraction + self.public_fraction >= 1:
            raise ValueError(f"run config 'public-fraction' = {self.public_fraction} is out of range: must be in "
                             f"(0, 1) and leave training data beside 'test-fraction' = {self.test_fraction}")
        if self.distortion_weight < 0:
            raise ValueError("run config 'distortion-weight' must be >= 0")
        for group in self.modules:
            choose("train-modules", group, MODULE_GROUPS)
        fields = self.model_fields()  # the Hugging Face models' configs are read: a bad one is named here
        layers = fields.get("vision_layers", PRESETS[self.preset]["vision_layers"])
        if self.vision_feature_layer and not -layers <= self.vision_feature_layer <= layers:
            raise ValueError(f"run config 'vision-feature-layer' = {self.vision_feature_layer} is out of range: the "
                             f"tower has {layers} layers, so -{layers}..{layers} (0: the preset's)")
        try:
            parse_cut(self.cut, self.lm_layers)
        except ValueError as exc:
            raise ValueError(f"run config 'cut': {exc}") from None
        at_least("lora-rank", self.lora_rank, 0)
        at_least("lora-alpha", self.lora_alpha, 0)
        if self.lora_rank:
            names = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
            if not names:
                raise ValueError("run config 'lora-targets' names no layer (e.g. 'q_proj,v_proj')")
            for part in (t.strip() for t in self.lora_parts.split(",") if t.strip()):
                choose("lora-parts", part, ("lm", "vision"))
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("run config 'tensorboard' = true needs the tensorboard package: "
                             "pip install 'sltestbed[tensorboard]'")
        check_device(self.device)
        choose("precision", self.precision, PRECISIONS)
        at_least("benchmark-roundtrips", self.benchmark_roundtrips, 0)
        choose("attack", self.attack, ATTACKS)
        for key in ("public-size", "attack-samples", "attack-steps"):
            at_least(key, getattr(self, key.replace("-", "_")), 1)
        if self.attack != "none" and self.strategy == "fedavg":
            raise ValueError("run config 'attack' attacks what crosses the cut; strategy 'fedavg' has no cut")
        if self.strategy == "local-loss" and label_protocol(self.labels).private:
            raise ValueError(f"strategy 'local-loss' needs labels = 'server': the server trains on the labels that "
                             f"come up with the round's activations (not labels = {self.labels!r})")
        if self.fault:
            self.fault_spec  # parses, or raises naming the key
        check_dataset(self.dataset)
        choose("partition-by", self.partition_by, ("answer", "qtype"))
        at_least("max-samples", self.max_samples, 0)
        if not self.hf_dataset:
            default = ExperimentConfig()
            changed = [k.replace("_", "-") for k in HF_DATASET_KEYS if getattr(self, k) != getattr(default, k)]
            if changed:
                raise ValueError(f"run config {', '.join(repr(k) for k in changed)}: for a Hugging Face data set only "
                                 f"(dataset = 'hf:<path or hub name>'), not {self.dataset!r}")
        choose("base-delivery", self.base_delivery, BASE_DELIVERIES)
        if self.base_delivery == "path" and self.base not in ("auto", "none") and not os.path.isdir(self.base):
            raise ValueError(f"run config 'base' = {self.base!r}: no such model directory (or use 'auto' / 'none'; "
                             f"with base-delivery = 'flower' only the server reads it)")

    # --- derived --------------------------------------------------------------------------
    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.train_modules.split(",") if m.strip())

    @property
    def fault_spec(self) -> tuple[str, int, int, int] | None:
        """(action, partition, round, step) of the injected fault, or None."""
        if not self.fault:
            return None
        parts = self.fault.split(":")
        if len(parts) != 4 or parts[0] not in FAULTS or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"run config 'fault' = {self.fault!r}: use 'raise:P:R:S', 'stall:P:R:S', 'lie:P:R:S' "
                             "or 'kill:P:R:S' (partition, round, step as integers)")
        return parts[0], int(parts[1]), int(parts[2]), int(parts[3])

    @property
    def auto_bits(self) -> bool:
        return self.bits == "auto"

    @property
    def widths(self) -> dict[str, int]:
        """The activation bit width per modality. With bits="auto" only after `resolved`."""
        out = {}
        for m in MODALITIES:
            own = getattr(self, f"{m}_bits")
            if own:
                out[m] = _width(self.quantizer, own)
            elif self.auto_bits:
                raise ValueError("bits='auto': the widths are chosen by calibration; use the resolved config")
            else:
                out[m] = _width(self.quantizer, self.bits)
        return out

    @property
    def act_bits(self) -> int:
        """The widest modality's width (the run's nominal width)."""
        return max(self.widths.values())

    def resolved(self, widths: dict[str, int]) -> "ExperimentConfig":
        """This config with the widths calibration chose (bits stays "auto", for the record)."""
        return replace(self, **{f"{m}_bits": int(widths[m]) for m in MODALITIES})

    @property
    def gradient_bits(self) -> int:
        return _width(self.grad_quantizer, self.grad_bits)

    @property
    def bits_label(self) -> str:
        """'2' / '32' / 'auto' / 'image 3, text 2': the widths as a table shows them."""
        if self.auto_bits:
            return "auto"
        widths = self.widths
        if len(set(widths.values())) == 1:
            return str(widths["image"])
        return ", ".join(f"{m} {b}" for m, b in widths.items())

    @property
    def name(self) -> str:
        """The run's directory name: strategy, quantizer, bits, then what differs from the
        defaults among entropy coding, data set, preset and labels, then the seed."""
        bits = self.bits_label.replace(", ", "-").replace(" ", "")
        default = ExperimentConfig()
        extra = ["ec"] if self.entropy_coding else []
        extra += [getattr(self, k) for k in ("dataset", "preset") if getattr(self, k) != getattr(default, k)]
        extra += [f"labels-{self.labels}"] if self.labels != default.labels else []
        extra = "".join(f"-{e}" for e in extra)
        return self.run_name or f"{self.strategy}-{self.quantizer}-{bits}b{extra}-seed{self.seed}"

    @property
    def cut_layers(self) -> int:
        from .model import parse_cut
        return parse_cut(self.cut, self.lm_layers)

    def model_fields(self) -> dict:
        """The model-config fields the Hugging Face models decide ({} for the preset's parts)."""
        from .model.pretrained import pretrained_fields
        return pretrained_fields(self.vision_model, self.language_model, self.vision_feature_layer)

    @property
    def lm_layers(self) -> int:
        from .model import PRESETS
        return self.model_fields().get("lm_layers", PRESETS[self.preset]["lm_layers"])

    def to_dict(self) -> dict:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def results_config(self) -> dict:
        """The run-config keys that decide a run's numbers: all but where its files go."""
        return {k: v for k, v in self.to_dict().items() if k not in LOCATION_KEYS}

    @property
    def image_size(self) -> int:
        """The side the images are resized to: the vision tower's input size."""
        from .model import PRESETS
        return self.model_fields().get("image_size", PRESETS[self.preset]["image_size"])

    @property
    def hf_dataset(self) -> bool:
        return self.dataset.strip().lower().startswith("hf:")

    def dataset_options(self) -> tuple:
        """A Hugging Face data set's split and columns as sorted (key, value) pairs; () otherwise."""
        if not self.hf_dataset:
            return ()
        return tuple(sorted({"split": self.dataset_split, "image_column": self.image_column,
                             "question_column": self.question_column, "answer_column": self.answer_column,
                             "qtype_column": self.type_column or None,
                             "max_samples": self.max_samples or None}.items()))

    def compute(self) -> Compute:
        """Where this party's role computes (ValueError where the device is not here)."""
        from .compute import Compute
        return Compute.of(self.device, self.precision)

    def model_overrides(self) -> dict:
        """The model-config keys a run sets on its base: the quantizers at the cut, LoRA."""
        return {"quantizer": self.quantizer, "bits": self.act_bits, "modality_bits": self.widths,
                "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "lora_targets": self.lora_targets,
                "lora_parts": self.lora_parts}


def check_dataset(name: str) -> None:
    """A registered data set, or hf:<path or hub name> (a path must exist: nothing is
    downloaded at run time here, and a missing directory is named before any work starts).
    A bare "hf" names no data: the run config has no other place for the path."""
    from .data import DATASETS, resolve_dataset_name

    known = ", ".join(d for d in DATASETS if d != "hf")
    try:
        key, implied = resolve_dataset_name(name)
    except ValueError:
        key, implied = None, {}
    if key is None or (key == "hf" and "path_or_name" not in implied):
        raise ValueError(f"run config 'dataset' = {name!r} is not a data set; known: {known}, or 'hf:<path or hub name>'")
    target = implied.get("path_or_name")
    if target is None:
        return
    if not target:
        raise ValueError("run config 'dataset' = 'hf:' needs a path or hub name after the colon")
    if target.startswith(("/", ".", "~")) and not os.path.exists(os.path.expanduser(target)):
        raise ValueError(f"run config 'dataset' = {name!r}: no such path {target!r}")


def _width(scheme: str, bits: int) -> int:
    """The bit width a run uses: fp32 / fp16 / bf16 imply theirs (any given value is ignored),
    other schemes take `bits`, which must be in their range."""
    from .quantizers import implied_bits, scheme_class
    cls = scheme_class(scheme)
    if len(cls.bits_range) == 1:
        return cls.bits_range.start
    return implied_bits(scheme, bits or None)
