"""The base model sent through Flower (`base-delivery = flower`), for clients with no shared disk.

With the default `base-delivery = path` every party loads the base checkpoint from the path
the server names, which needs a shared (or copied) file system. With `flower` the server
sends each client, once and before anything else (`query.base`), the base's config and the
tensors of the client part at the run's cut: the vision tower, connector, embeddings, the
decoder layers below the cut and the quantizer encoders, nothing of the server's part. The
ledger counts them as model bytes. The client writes them under its own cache directory
(`cache-dir`, relative to its working directory), named by the base's fingerprint; the
metas then name the base `flower:<fingerprint>`, and the client builds its model from that
copy: its part equals the one read from the path, weight for weight (its server-side
layers keep seeded initial values it never uses).

The received tensors are checked before anything is written: their names must be exactly
the client part's at the run's cut, each of the shape the config gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from .model import ClientPart, TinyLlava, TinyLlavaConfig

DELIVERED = "flower:"  # a meta's base that names a delivered copy: flower:<fingerprint>
CLIENT_PART_FILE = "client_part.safetensors"


def client_part_weights(model: TinyLlava, cut_layers: int) -> dict[str, torch.Tensor]:
    """The tensors of the client part at `cut_layers`, under their names in the whole model."""
    held = {id(t) for t in ClientPart(model, cut_layers).state_dict(keep_vars=True).values()}
    return {k: t.detach() for k, t in model.state_dict(keep_vars=True).items() if id(t) in held}


def fingerprint(directory: str, cut_layers: int) -> str:
    """What names a delivered base: a hash of the checkpoint's files and the cut."""
    digest = hashlib.sha256(f"cut={cut_layers}".encode())
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(directory, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def delivered_dir(cache_dir: str, fingerprint: str) -> str:
    if not fingerprint or not all(c in "0123456789abcdef" for c in fingerprint):
        raise ValueError(f"a delivered base's fingerprint must be lowercase hex, got {fingerprint!r}")
    return os.path.join(cache_dir, f"delivered-{fingerprint}")


def save_delivered(directory: str, config_json: str, weights: dict[str, torch.Tensor], cut_layers: int) -> None:
    """Check what arrived against the client part that `config_json` gives at `cut_layers`,
    then write it (config.json, client_part.safetensors) to `directory`, atomically."""
    config = TinyLlavaConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        expected = {k: tuple(t.shape) for k, t in client_part_weights(TinyLlava(config), cut_layers).items()}
    extra = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights))
    if extra or missing:
        raise ValueError(f"the delivered base does not hold the client part at cut {cut_layers}: "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    wrong = [k for k, t in weights.items() if tuple(t.shape) != expected[k]]
    if wrong:
        raise ValueError(f"the delivered base's tensors have the wrong shape: {wrong[:3]}")
    if os.path.isfile(os.path.join(directory, CLIENT_PART_FILE)):
        return  # delivered before (another message to this node, or another node on this host)
    tmp = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    config.save(tmp)
    save_file({k: t.detach().contiguous() for k, t in weights.items()}, os.path.join(tmp, CLIENT_PART_FILE))
    try:
        os.replace(tmp, directory)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)


def is_delivered(directory: str | None) -> bool:
    return bool(directory) and os.path.isfile(os.path.join(directory, CLIENT_PART_FILE))


def load_delivered(directory: str, seed: int, **config_overrides) -> TinyLlava:
    """A model whose client part is the delivered one (`config_overrides`: the run's
    quantizers, as `TinyLlava.from_pretrained` takes them; a quantizer tensor that no longer
    fits keeps its initial value there too); its server-side layers keep seeded initial values."""
    config = TinyLlavaConfig.load(directory).replace(**config_overrides)
    torch.manual_seed(seed)
    model = TinyLlava(config)
    state = load_file(os.path.join(directory, CLIENT_PART_FILE))
    sources = model.fitting_sources(state)  # every delivered tensor must find its place; the rest keep theirs
    used = set(sources.values())
    lacking = [k for k in state if k not in used and not k.startswith("quant_")]
    if lacking:
        raise ValueError(f"{directory}: the delivered client part does not fit this run's model: {lacking[:3]}")
    model.load_state_dict({k: state[source] for k, source in sources.items()}, strict=False)
    return model
