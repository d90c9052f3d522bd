"""Small random-weight Hugging Face models saved to local directories, as a user's own would be:
a SigLIP vision tower with its image processor, a Qwen2 causal LM with a byte-level BPE
tokenizer trained on the data set's text (nothing is downloaded)."""

from __future__ import annotations

import os

import torch

IMAGE_MEAN, IMAGE_STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def save_vision_tower(directory: str, image_size: int = 8, seed: int = 0) -> str:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=image_size, patch_size=4)).save_pretrained(directory)
    SiglipImageProcessor(image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
                         size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory


def train_tokenizer(texts, vocab_size: int = 400):
    """A byte-level BPE tokenizer (as Qwen2's and GPT-2's are) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def save_language_model(directory: str, texts, seed: int = 0, layers: int = 2) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=128, tie_word_embeddings=False)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def digits_text() -> list[str]:
    from sltestbed.data import load_dataset

    ds = load_dataset("digits-vqa", seed=0, image_size=8)
    return [f"{q} {a}" for q, a in zip(ds["question"], ds["answer"])]


def save_parts(root: str) -> tuple[str, str]:
    """(vision directory, language-model directory) under `root`."""
    return (save_vision_tower(os.path.join(root, "siglip")),
            save_language_model(os.path.join(root, "qwen2"), digits_text()))


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def save_vqa_dataset(directory: str, rows: int = 360, seed: int = 0) -> str:
    """A small image-question-answer data set written with `save_to_disk`, in columns of its own
    naming (picture, prompt, reply, kind): a coloured square on noise, asked its colour or
    whether it is red."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    pictures, prompts, replies, kinds = [], [], [], []
    for i in range(rows):
        colour = names[i % 3]
        picture = rng.integers(0, 60, size=(12, 12, 3), dtype=np.uint8)
        picture[3:9, 3:9] = COLOURS[colour]
        pictures.append(picture)
        if i % 2:
            prompts.append("What colour is the square?"), replies.append(colour.capitalize()), kinds.append("colour")
        else:
            prompts.append("Is the square red?"), replies.append("yes" if colour == "red" else "no"), kinds.append("check")
    Dataset.from_dict({"picture": pictures, "prompt": prompts, "reply": replies, "kind": kinds}).save_to_disk(directory)
    return directory
