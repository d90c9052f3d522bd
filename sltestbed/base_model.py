"""The base model: the centralized reference that split fine-tuning starts from.

It stands in for the pretrained foundation model of the papers: the unsplit model trained on
all the data (every module, one stage), once per recipe, and cached on disk under a hash of
what it was trained on and how (`BaseSpec`). The `python -m sltestbed.train` command and the
Flower app ask for it the same way, so for the same config they use the same model.

`build_model` is the one way every party makes a run's model: from the base checkpoint with
the run's quantizers at the cut, or, without a base, from seeded random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import torch

from .base_delivery import is_delivered, load_delivered
from .experiment import ExperimentConfig
from .model import TinyLlava, TinyLlavaConfig, preset
from .model.pretrained import pretrained_fields
from .trainer import TensorData, evaluate, stage_regime, train_stage

MODEL_KEYS = ("vision-model", "language-model", "vision-feature-layer")  # run-config keys of the Hugging Face parts

TRAINING_RECORD = "training.json"


@dataclass(frozen=True)
class BaseSpec:
    """What the base model is trained on and how; its hash names the cache directory."""

    dataset: str
    preset: str
    image_size: int | None
    seed: int
    epochs: int
    lr: float
    batch_size: int
    test_fraction: float
    dataset_options: tuple = ()  # sorted (key, value) pairs
    pool: str = "train"  # what it trains on: "train" (the clients' training split) or "public" (the public pool)
    public_fraction: float = 0.0  # the splits' public pool (0: none, the two-way split of older caches)
    models: tuple = ()  # sorted (run-config key, value) pairs of the Hugging Face parts that differ from the preset's

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "BaseSpec":
        """The base model of a run."""
        models = tuple((k, v) for k, v in sorted(cfg.to_dict().items()) if k in MODEL_KEYS and v)
        return cls(cfg.dataset, cfg.preset, None, cfg.seed, cfg.base_epochs, cfg.base_lr, cfg.base_batch_size, cfg.test_fraction,
                   cfg.dataset_options(), public_fraction=cfg.public_fraction, models=models)

    def key(self) -> str:
        fields = asdict(self)
        if not fields["dataset_options"]:  # keeps the names of caches made before options existed
            del fields["dataset_options"]
        if fields["pool"] == "train":  # ... and before pools existed
            del fields["pool"]
        if not fields["public_fraction"]:  # ... and before the public split existed
            del fields["public_fraction"]
        if not fields["models"]:  # ... and before Hugging Face parts
            del fields["models"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def model_config(self, vocab_size: int, **overrides) -> TinyLlavaConfig:
        if self.image_size:
            overrides["image_size"] = self.image_size
        return model_config(self.preset, vocab_size, dict(self.models), **overrides)


def train_centralized(spec: BaseSpec, train_data: TensorData, test_data: TensorData, vocab_size: int,
                      progress: bool = True, log_fn=None) -> tuple[TinyLlava, dict]:
    """The unsplit model trained on all the data; (model, {"losses", "accuracy", ...}).
    Without a progress bar, `log_fn` gets a line every 5 epochs."""
    torch.manual_seed(spec.seed)
    model = TinyLlava(spec.model_config(vocab_size))

    started = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        if log_fn is not None and not progress and (epoch % 5 == 0 or epoch == spec.epochs):
            elapsed = time.perf_counter() - started
            left = f", about {elapsed / epoch * (spec.epochs - epoch):.0f} s left" if epoch < spec.epochs else ""
            log_fn(f"base model: epoch {epoch}/{spec.epochs}, training loss {loss:.4f}, {elapsed:.0f} s{left}")

    losses = train_stage(model, model, train_data, stage_regime("full", spec.epochs, spec.lr)[0], spec.batch_size,
                         spec.seed, progress=progress, on_epoch=on_epoch)
    return model, {"losses": losses, **evaluate(model, test_data)}


def cached_path(spec: BaseSpec, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"base-{spec.key()}")


def ensure_base_model(base: str, spec: BaseSpec, cache_dir: str, data, vocab_size: int, progress: bool = True,
                      log_fn=print) -> str | None:
    """Directory of the base checkpoint: `base` itself if it is a directory, None for 'none',
    and for 'auto' the centralized reference of `spec`, trained now unless cached. `data()`
    gives the (train, test) TensorData to train it on, when it must be trained."""
    if base == "none":
        return None
    if base != "auto":
        if not os.path.isdir(base):
            raise ValueError(f"base: no such model directory {base!r}")
        return base
    directory = cached_path(spec, cache_dir)
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        log_fn(f"base model: cached at {directory}")
        return directory
    log_fn(f"base model: training the centralized reference for {spec.epochs} epochs (cached at {directory})")
    model, result = train_centralized(spec, *data(), vocab_size, progress, log_fn)
    tmp = f"{directory}.tmp-{os.getpid()}"  # written aside, then renamed: readers never see half a model
    model.save_pretrained(tmp)
    with open(os.path.join(tmp, TRAINING_RECORD), "w") as f:
        json.dump({"spec": asdict(spec), **result}, f, indent=2)
    if os.path.exists(directory):  # another process got there first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, directory)
    log_fn(f"base model: held-out accuracy {result['accuracy']:.4f}")
    return directory


def training_record(directory: str) -> dict:
    """What a cached base model's training logged (spec, losses, held-out accuracy); {} if
    the directory has none (a model made elsewhere)."""
    path = os.path.join(directory, TRAINING_RECORD)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def build_model(cfg: ExperimentConfig, base: str | TinyLlava | None, vocab_size: int) -> TinyLlava:
    """A run's model with its quantizers at the cut: from the base (a checkpoint directory, or
    a model already loaded), or from seeded random weights when there is none (every party
    then starts from the same weights)."""
    overrides = cfg.model_overrides()
    if isinstance(base, TinyLlava):
        model = TinyLlava(base.config.replace(**overrides))
        model.load_weights(base.state_dict())
        return model
    if is_delivered(base):  # base-delivery = flower: the client part a client received
        return load_delivered(base, cfg.seed, **overrides)
    if base:
        return TinyLlava.from_pretrained(base, **overrides)
    torch.manual_seed(cfg.seed)
    return TinyLlava(model_config(cfg.preset, vocab_size, cfg.to_dict(), **overrides))


def model_config(preset_name: str, vocab_size: int, models: dict, **overrides) -> TinyLlavaConfig:
    """The preset's model config with the Hugging Face parts `models` names (run-config keys
    `vision-model`, `language-model`, `vision-feature-layer`; others are ignored) in place of
    its own. `vocab_size`: the tokenizer's, which a loaded language model's vocabulary must hold."""
    fields = pretrained_fields(models.get("vision-model", ""), models.get("language-model", ""),
                               models.get("vision-feature-layer", 0))
    if fields.get("vocab_size", vocab_size) < vocab_size:
        raise ValueError(f"run config 'language-model': its vocabulary ({fields['vocab_size']}) is smaller than its "
                         f"tokenizer's ({vocab_size})")
    return preset(preset_name, **{"vocab_size": vocab_size, **fields, **overrides})
