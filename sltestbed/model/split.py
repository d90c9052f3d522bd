"""The model cut in two (or three) parts that live on different machines.

    client:  pixels, question -> vision tower -> connector, token embeddings
             -> [first k language-model layers] -> quantizer encoders (image, text)
    ---- the link: codes up, gradients down ----
    server:  quantizer decoders -> re-joined sequence -> remaining layers -> norm
             -> head -> answer logits                      (labels at the server)
             -> hidden state at the answer position        (U-shaped: head on the client)
    client:  head -> logits -> loss                        (U-shaped only)

Cut "connector" is the paper's (k = 0); "lm:k" moves the first k layers to the client.
Parts hold references to the modules of one `TinyLlava`, so an in-process split trains the
same weights the unsplit model holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..label_protocol import label_protocol
from ..quantizers import QuantOut
from .components import run_decoder_layers
from .tinyllava import TinyLlava, answer_positions


def parse_cut(cut: str | int, num_layers: int) -> int:
    """'connector' -> 0, 'lm:k' -> k client-side layers (0 <= k < num_layers)."""
    if isinstance(cut, int) and not isinstance(cut, bool):
        k = cut
    elif cut == "connector":
        k = 0
    elif isinstance(cut, str) and cut.startswith("lm:") and cut[3:].isdigit():
        k = int(cut[3:])
    else:
        raise ValueError(f"unknown cut {cut!r}: use 'connector' or 'lm:k' with 0 <= k < {num_layers}")
    if not 0 <= k < num_layers:
        raise ValueError(f"cut {cut!r} out of range: the language model has {num_layers} layers, "
                         f"so k must be in 0..{num_layers - 1} (at least one layer stays on the server)")
    return k


@dataclass
class CutFeatures:
    """The tensors at the cut, before quantization, per modality."""

    image: torch.Tensor  # B x N_image x d
    text: torch.Tensor  # B x T x d

    def items(self):
        return (("image", self.image), ("text", self.text))


class ClientPart(nn.Module):
    def __init__(self, model: TinyLlava, cut_layers: int):
        super().__init__()
        self.vision, self.connector, self.embed_tokens = model.vision, model.connector, model.embed_tokens
        self.layers = nn.ModuleList(model.lm.model.layers[:cut_layers])
        self.rotary_emb, self.lm_config = model.lm.model.rotary_emb, model.lm.config
        self.encoders = model.quant_encoders

    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> CutFeatures:
        image = self.connector(self.vision(pixel_values))
        text = self.embed_tokens(input_ids)
        if len(self.layers):
            hidden = run_decoder_layers(self.layers, self.rotary_emb, self.lm_config, torch.cat([image, text], 1))
            image, text = hidden[:, : image.shape[1]], hidden[:, image.shape[1]:]
        return CutFeatures(image, text)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> dict[str, QuantOut]:
        """Quantized features per modality (values carry the straight-through gradient)."""
        feats = self.features(pixel_values, input_ids)
        with torch.autocast(pixel_values.device.type, enabled=False):  # codes in fp32 at any precision
            return {m: self.encoders[m](x.float()) for m, x in feats.items()}


class ServerPart(nn.Module):
    def __init__(self, model: TinyLlava, cut_layers: int, with_head: bool = True):
        super().__init__()
        self.decoders = model.quant_decoders
        self.layers = nn.ModuleList(model.lm.model.layers[cut_layers:])
        self.rotary_emb, self.lm_config = model.lm.model.rotary_emb, model.lm.config
        self.norm = model.lm.model.norm
        self.head = model.lm.lm_head if with_head else None

    def forward(self, image: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Dequantized values per modality -> answer logits (or, without the head, the final
        hidden state at the answer position)."""
        image, text = self.decoders["image"](image), self.decoders["text"](text)
        hidden = run_decoder_layers(self.layers, self.rotary_emb, self.lm_config, torch.cat([image, text], 1))
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = self.norm(hidden[rows, answer_positions(image.shape[1], lengths)])
        return last if self.head is None else self.head(last)


class HeadPart(nn.Module):
    """The language-model head, on the client in the U-shaped (label-private) split."""

    def __init__(self, model: TinyLlava):
        super().__init__()
        self.head = model.lm.lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


class SplitTinyLlava(nn.Module):
    """Client part, quantizers and server part (and head) in one process: the reference for
    split training without a network, and the in-process quantized training. The head sits on
    the server unless `labels` is "u-shaped" (with "client" only the loss moves, which
    changes no number)."""

    def __init__(self, model: TinyLlava, cut: str | int = "connector", labels: str = "server"):
        super().__init__()
        protocol = label_protocol(labels)
        self.model = model
        self.cut_layers = parse_cut(cut, model.num_lm_layers)
        self.client = ClientPart(model, self.cut_layers)
        self.server = ServerPart(model, self.cut_layers, with_head=not protocol.head_on_client)
        self.head = HeadPart(model) if protocol.head_on_client else None

    def forward(self, pixel_values, input_ids, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer logits, summed distortion loss of the quantizers)."""
        quantized = self.client(pixel_values, input_ids)
        out = self.server(quantized["image"].values, quantized["text"].values, lengths)
        logits = out if self.head is None else self.head(out)
        return logits, sum(q.loss for q in quantized.values())

