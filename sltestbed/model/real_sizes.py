"""Real-size models, profiled without their weights: the published configurations written
here, built with `transformers` config classes on the `meta` device (shapes only, no memory,
no download), cut as the testbed cuts them.

Components, with the published parameter count each is checked against (within 1%):

    siglip-so400m-384  SigLIP so400m/14 at 384 px (SiglipVisionConfig: 27 layers, 1152 wide,
                       16 heads, MLP 4304), the whole vision model as TinyLLaVA loads it
    openelm-270m       OpenELM-270M: not a transformers class; its layer-wise head and FFN
                       schedule and weights are computed by `openelm.py` from the published
                       configuration (no module is built)
    qwen2-0.5b         Qwen2-0.5B (Qwen2Config: 24 layers, 896 wide, 14 heads, 2 KV heads,
                       MLP 4864, vocab 151936, tied embeddings)
    tinyllama-1.1b     TinyLlama-1.1B (LlamaConfig: 22 layers, 2048 wide, 32 heads, 4 KV heads,
                       MLP 5632, vocab 32000, untied)
    phi-2              Phi-2 (PhiConfig: 32 layers, 2560 wide, 32 heads, MLP 10240, vocab 51200,
                       partial rotary 0.4, untied head with bias)
    vit-b16-224        ViT-B/16 at 224 px (ViTConfig defaults: 12 layers, 768 wide, 12 heads,
                       MLP 3072), no pooler, no classification head

Cuts (`real_cuts`):

    tinyllava-<lm>     Quantized-TinyLLaVA's connector cut. Client: the SigLIP tower, the
                       connector (2-layer MLP 1152 -> d -> d) and the LM's input embedding.
                       Server: the rest of the LM; a tied head becomes a server-side copy of the
                       embedding. Up per sample: (729 image tokens + T text tokens) x d
                       activations and 1 label (the testbed's one answer token); down: their
                       gradients. 729 = (384 // 14)^2 patches, SigLIP has no CLS token;
                       T (`text_tokens`) is an assumption, 64 by default.
    mpsl-vit-b16       MPSL's tokenizer cut. Client: ViT-B/16's patch embedding, CLS token and
                       position embeddings. Server: the 12-layer encoder and final norm. Up per
                       sample: 197 tokens (196 patches + CLS) x 768 and 1 label; down: gradients.

Columns of a cut's row (`RealCut`): client_params and server_params (weights each side
holds), fedavg_params (the whole model once: what FedAvg moves), client_flops_per_sample
(forward FLOPs of the client part for one sample, counted by torch's FlopCounterMode on the
meta device; an embedding lookup counts 0), up_elements / down_elements per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel)

from ..comm_model import Workload
from .components import Connector
from .openelm import openelm_270m

META = torch.device("meta")
DEFAULT_TEXT_TOKENS = 64


@dataclass(frozen=True)
class Published:
    parameters: float
    source: str


PUBLISHED = {
    "siglip-so400m-384": Published(428e6, "Alabdulmohsin et al., Getting ViT in Shape (arXiv 2305.13035): SoViT-400m/14, 428M"),
    "openelm-270m": Published(270e6, "Mehta et al., OpenELM (arXiv 2404.14619) and model card apple/OpenELM-270M: 270M"),
    "qwen2-0.5b": Published(0.49e9, "Qwen2 Technical Report (arXiv 2407.10671), Table 1: Qwen2-0.5B, 0.49B"),
    "tinyllama-1.1b": Published(1.1e9, "Zhang et al., TinyLlama (arXiv 2401.02385) and model card: 1.1B"),
    "phi-2": Published(2.78e9, "Hugging Face hub page microsoft/phi-2: 2.78B params (the card's text rounds to 2.7B)"),
    "vit-b16-224": Published(86e6, "Dosovitskiy et al., ViT (arXiv 2010.11929), Table 1: ViT-Base, 86M"),
}
LANGUAGE_MODELS = ("openelm-270m", "qwen2-0.5b", "tinyllama-1.1b", "phi-2")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def siglip_so400m() -> SiglipVisionModel:
    with META:
        return SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                    num_attention_heads=16, image_size=384, patch_size=14))


def vit_b16() -> ViTModel:
    with META:
        return ViTModel(ViTConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                  image_size=224, patch_size=16), add_pooling_layer=False)


def _transformers_lm(name: str):
    with META:
        if name == "qwen2-0.5b":
            return Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                                tie_word_embeddings=True))
        if name == "tinyllama-1.1b":
            return LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                                num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                                tie_word_embeddings=False))
        return PhiForCausalLM(PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                                        num_attention_heads=32, partial_rotary_factor=0.4, tie_word_embeddings=False))


@dataclass(frozen=True)
class LanguageModelSize:
    """What the cut needs of a language model: its width and weights, and which are the input
    embedding."""

    hidden_size: int
    parameters: int  # all weights, a tied embedding counted once
    embedding: int  # the input embedding's weights
    tied: bool


def language_model_size(name: str) -> LanguageModelSize:
    if name not in LANGUAGE_MODELS:
        raise ValueError(f"unknown language model {name!r}: choose one of {', '.join(LANGUAGE_MODELS)}")
    if name == "openelm-270m":
        shape = openelm_270m()
        return LanguageModelSize(shape.hidden_size, shape.parameters(), shape.embedding_parameters, tied=True)
    lm = _transformers_lm(name)
    return LanguageModelSize(lm.config.hidden_size, _count(lm), lm.get_input_embeddings().weight.numel(),
                             tied=bool(lm.config.tie_word_embeddings))


def component_parameters(name: str) -> int:
    """Our count of one published component's weights."""
    if name == "siglip-so400m-384":
        return _count(siglip_so400m())
    if name == "vit-b16-224":
        return _count(vit_b16())
    if name in LANGUAGE_MODELS:
        return language_model_size(name).parameters
    raise ValueError(f"unknown component {name!r}: choose one of {', '.join(PUBLISHED)}")


@dataclass(frozen=True)
class RealCut:
    name: str
    cut: str
    client_params: int
    server_params: int
    fedavg_params: int
    client_flops_per_sample: float
    cut_elements: dict  # modality -> elements per sample at the cut
    label_elements: int = 1

    @property
    def up_elements(self) -> int:
        return sum(self.cut_elements.values()) + self.label_elements

    @property
    def down_elements(self) -> int:
        return sum(self.cut_elements.values())

    def workload(self) -> Workload:
        return Workload(self.client_params, self.fedavg_params, dict(self.cut_elements), self.label_elements)


@torch.no_grad()
def _forward_flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, META:
        fn()
    return float(counter.get_total_flops())


def tinyllava_cut(lm_name: str, text_tokens: int = DEFAULT_TEXT_TOKENS) -> RealCut:
    if not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens must be a positive integer, got {text_tokens!r}")
    lm = language_model_size(lm_name)
    vision = siglip_so400m()
    vcfg = vision.config
    image_tokens = (vcfg.image_size // vcfg.patch_size) ** 2
    with META:
        connector = Connector(vcfg.hidden_size, lm.hidden_size)

    def client_forward():
        pixels = torch.empty(1, 3, vcfg.image_size, vcfg.image_size)
        connector(vision(pixel_values=pixels).last_hidden_state)

    client = _count(vision) + _count(connector) + lm.embedding
    server = lm.parameters - (0 if lm.tied else lm.embedding)  # tied: the head is the server's own copy
    return RealCut(f"tinyllava-{lm_name}", "connector", client, server, _count(vision) + _count(connector) + lm.parameters,
                   _forward_flops(client_forward),
                   {"image": image_tokens * lm.hidden_size, "text": text_tokens * lm.hidden_size})


def mpsl_vit_cut() -> RealCut:
    vit = vit_b16()
    cfg = vit.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches and the CLS token
    client = _count(vit.embeddings)
    flops = _forward_flops(lambda: vit.embeddings(torch.empty(1, 3, cfg.image_size, cfg.image_size)))
    return RealCut("mpsl-vit-b16", "tokenizer", client, _count(vit) - client, _count(vit), flops,
                   {"image": tokens * cfg.hidden_size})


def real_cuts(text_tokens: int = DEFAULT_TEXT_TOKENS) -> list[RealCut]:
    return [tinyllava_cut(name, text_tokens) for name in LANGUAGE_MODELS] + [mpsl_vit_cut()]
