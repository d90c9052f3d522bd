"""The TinyLLaVA-style model, its configuration, its split and the cut profile."""

from .config import LANGUAGE_MODELS, PRESETS, VISION_TOWERS, TinyLlavaConfig, preset
from .local_head import LocalHead
from .profile import cut_profile
from .split import ClientPart, CutFeatures, HeadPart, ServerPart, SplitTinyLlava, parse_cut
from .tinyllava import MODALITIES, TinyLlava, answer_positions

__all__ = [
    "ClientPart", "CutFeatures", "HeadPart", "LANGUAGE_MODELS", "LocalHead", "MODALITIES", "PRESETS", "ServerPart",
    "SplitTinyLlava", "TinyLlava", "TinyLlavaConfig", "VISION_TOWERS", "answer_positions", "cut_profile",
    "parse_cut", "preset",
]
