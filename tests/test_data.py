"""Tests for sltestbed.data: the VQA data sets, partitions, tokenizer and collator (offline)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image
from sklearn.datasets import load_digits
from transformers import PreTrainedTokenizerFast

from sltestbed.data import (
    VQACollator,
    build_tokenizer,
    generate_scenes,
    load_dataset,
    load_hf_vqa,
    load_partition,
    majority_baseline,
    make_digits_vqa,
    make_loader,
    make_shapes_vqa,
    partition,
    render_scene,
    split_holdout,
    split_three,
)
from sltestbed.data.digits_vqa import QUESTION_TYPES as DIGIT_TYPES
from sltestbed.data.hf_loader import _looks_like_path
from sltestbed.data.shapes_vqa import COLORS, SHAPES, relation_holds
from sltestbed.data.shapes_vqa import QUESTION_TYPES as SHAPE_TYPES
from sltestbed.data.text import NUMBER_WORDS

SHAPES_KW = dict(num_images=300, image_size=32, max_objects=4, seed=3)


@pytest.fixture(scope="module")
def digits():
    return make_digits_vqa(seed=0)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_vqa(**SHAPES_KW)


@pytest.fixture(scope="module")
def tokenizer(digits, shapes):
    return build_tokenizer([digits, shapes])


def rows(ds, *columns):
    return list(zip(*(ds[c] for c in columns)))


# ----------------------------------------------------------------------------- digits-VQA


def test_digits_vqa_has_all_images_and_question_types(digits):
    assert len(set(digits["image_id"])) == 1797
    assert len(digits) == 1797 * len(DIGIT_TYPES)
    assert Counter(digits["qtype"]) == {t: 1797 for t in DIGIT_TYPES}
    image = digits.with_format("numpy")[0]["image"]
    assert image.shape == (16, 16, 3)
    assert digits.features["image"].dtype == "uint8"
    assert all(len(a.split()) == 1 and a == a.lower() for a in set(digits["answer"]))
    assert all(q.endswith(" ?") for q in set(digits["question"]))


def test_digits_vqa_answers_match_sklearn_labels(digits):
    target = load_digits().target
    for question, answer, qtype, image_id in rows(digits, "question", "answer", "qtype", "image_id"):
        label = int(target[image_id])
        if qtype == "digit":
            expected = NUMBER_WORDS[label]
        elif qtype == "parity":
            asks_even = question == "is it even ?"
            assert asks_even or question == "is it odd ?"
            expected = "yes" if (label % 2 == 0) == asks_even else "no"
        else:
            k = NUMBER_WORDS.index(re.fullmatch(rf"is it {qtype} than (\w+) \?", question).group(1))
            expected = "yes" if (label > k if qtype == "greater" else label < k) else "no"
        assert answer == expected, (question, label)


def test_digits_vqa_images_are_scaled_upsampled_sklearn_digits():
    raw = load_digits().images
    native = make_digits_vqa(image_size=8, question_types=["digit"]).with_format("numpy")["image"][:]
    np.testing.assert_array_equal(native[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(native[..., 0], native[..., 2])
    big = make_digits_vqa(image_size=16, question_types=["digit"]).with_format("numpy")["image"][:]
    np.testing.assert_array_equal(big[:, ::2, ::2], native)  # nearest: 2 x 2 blocks
    np.testing.assert_array_equal(big[:, 1::2, 1::2], native)
    a = make_digits_vqa(image_size=12, interpolation="bilinear", question_types=["digit"])
    b = make_digits_vqa(image_size=12, interpolation="bilinear", question_types=["digit"])
    assert np.array_equal(a.with_format("numpy")["image"][:], b.with_format("numpy")["image"][:])


def test_digits_vqa_is_deterministic_given_seed(digits):
    again = make_digits_vqa(seed=0)
    assert rows(again, "question", "answer", "image_id") == rows(digits, "question", "answer", "image_id")
    other = make_digits_vqa(seed=1)
    assert other["question"] != digits["question"]
    sampled = make_digits_vqa(questions_per_image=2, seed=5)
    assert len(sampled) == 2 * 1797
    assert set(Counter(sampled["image_id"]).values()) == {2}
    resampled = make_digits_vqa(questions_per_image=2, seed=5)
    assert rows(sampled, "question", "qtype") == rows(resampled, "question", "qtype")


# ----------------------------------------------------------------------------- shapes-VQA


def test_shapes_vqa_is_deterministic_given_seed(shapes):
    again = make_shapes_vqa(**SHAPES_KW)
    assert rows(again, "question", "answer", "image_id") == rows(shapes, "question", "answer", "image_id")
    assert np.array_equal(again.with_format("numpy")["image"][:], shapes.with_format("numpy")["image"][:])
    other_kw = {**SHAPES_KW, "seed": 4}
    assert generate_scenes(**other_kw) != generate_scenes(**SHAPES_KW)
    other = make_shapes_vqa(**other_kw)
    first = shapes.with_format("numpy")[0]["image"]
    assert not np.array_equal(other.with_format("numpy")[0]["image"], first)


def test_shapes_vqa_answers_agree_with_the_scene(shapes):
    scenes = generate_scenes(**SHAPES_KW)
    by_color = {}
    for question, answer, qtype, image_id in rows(shapes, "question", "answer", "qtype", "image_id"):
        scene = scenes[image_id]
        if qtype == "count":
            shape = re.fullmatch(r"how many (\w+)s are there \?", question).group(1)
            assert answer == NUMBER_WORDS[sum(obj.shape == shape for obj in scene)]
        elif qtype == "color":
            shape = re.fullmatch(r"what colour is the (\w+) \?", question).group(1)
            matches = [obj for obj in scene if obj.shape == shape]
            assert len(matches) == 1 and matches[0].color == answer
        elif qtype == "shape":
            color = re.fullmatch(r"what shape is the (\w+) object \?", question).group(1)
            matches = [obj for obj in scene if obj.color == color]
            assert len(matches) == 1 and matches[0].shape == answer
        elif qtype == "position":
            axis, color = re.fullmatch(r"which (row|column) is the (\w+) object in \?", question).groups()
            (obj,) = [obj for obj in scene if obj.color == color]
            # the object's pixel centres lie inside the named third of the image
            image = render_scene(scene, 32)
            ys, xs = np.nonzero(np.all(image == np.array(COLORS[color]), axis=-1))
            along = (ys if axis == "row" else xs) + 0.5
            names = ("top", "middle", "bottom") if axis == "row" else ("left", "middle", "right")
            third = names.index(answer)
            assert 32 * third / 3 <= along.min() and along.max() < 32 * (third + 1) / 3, (question, answer)
        else:
            pattern = r"is the (\w+) object (left of|right of|above|below) the (\w+) object \?"
            a, relation, b = re.fullmatch(pattern, question).groups()
            (obj_a,) = [obj for obj in scene if obj.color == a]
            (obj_b,) = [obj for obj in scene if obj.color == b]
            assert answer == ("yes" if relation_holds(obj_a, obj_b, relation) else "no")
        by_color[image_id] = {obj.color for obj in scene}
    # the pixels show exactly the scene's colours
    images = shapes.with_format("numpy")
    for image_id in list(by_color)[:50]:
        row = int(np.flatnonzero(np.asarray(shapes["image_id"]) == image_id)[0])
        image = images[row]["image"]
        assert np.array_equal(image, render_scene(scenes[image_id], 32))
        for color, rgb in COLORS.items():
            present = bool(np.all(image == np.array(rgb), axis=-1).any())
            assert present == (color in by_color[image_id]), (image_id, color)


def test_shapes_vqa_has_every_question_type_and_sane_baselines(shapes):
    assert set(shapes["qtype"]) == set(SHAPE_TYPES)
    assert set(shapes.filter(lambda r: r["qtype"] == "shape")["answer"]) == set(SHAPES)
    baseline = majority_baseline(shapes)
    assert set(baseline) == set(SHAPE_TYPES)
    assert all(0.0 < v < 0.75 for v in baseline.values()), baseline
    assert make_shapes_vqa(num_images=5, image_size=16, max_objects=1, question_types=["count"]).num_rows == 5


def test_majority_baseline_values(digits):
    baseline = majority_baseline(digits)
    assert set(baseline) == set(DIGIT_TYPES)
    counts = Counter(load_digits().target)
    assert baseline["digit"] == pytest.approx(max(counts.values()) / 1797)
    for qtype in ("parity", "greater", "less"):
        assert 0.5 <= baseline[qtype] < 0.6


# ----------------------------------------------------------------------------- splits and partitions


def test_holdout_split_is_disjoint_by_image(digits):
    train, test = split_holdout(digits, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(digits)
    assert train.features == digits.features
    numpy_train, _ = split_holdout(digits.with_format("numpy", columns=["image"]), test_fraction=0.2, seed=0)
    assert numpy_train.format["type"] == "numpy" and numpy_train.format["columns"] == ["image"]
    train_ids, test_ids = set(train["image_id"]), set(test["image_id"])
    assert not train_ids & test_ids
    assert len(test_ids) == round(0.2 * 1797)
    again_train, again_test = split_holdout(digits, test_fraction=0.2, seed=0)
    assert again_test["image_id"] == test["image_id"]
    _, other_test = split_holdout(digits, test_fraction=0.2, seed=1)
    assert set(other_test["image_id"]) != test_ids



def test_three_way_split_keeps_the_test_split_and_is_disjoint_by_image(digits):
    train, test, public = split_three(digits, 0.2, 0.2, seed=0)
    assert len(train) + len(test) + len(public) == len(digits)
    ids = [set(split["image_id"]) for split in (train, test, public)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert len(ids[2]) == round(0.2 * 1797)
    assert test["image_id"] == split_holdout(digits, test_fraction=0.2, seed=0)[1]["image_id"]
    assert len(split_three(digits, 0.2, 0.0, seed=0)[2]) == 0
    with pytest.raises(ValueError, match="leave no training data"):
        split_three(digits, 0.6, 0.4, seed=0)
    with pytest.raises(ValueError, match=r"public_fraction must be in \[0, 1\), got -0.1"):
        split_three(digits, 0.2, -0.1, seed=0)


def keys(ds):
    return Counter(rows(ds, "image_id", "qtype"))


def test_iid_partitions_cover_train_exactly_once_and_are_reproducible(digits):
    train, _ = split_holdout(digits, test_fraction=0.2, seed=0)
    parts = partition(train, num_partitions=5, partitioner="iid", seed=0)
    assert sum((keys(p) for p in parts), Counter()) == keys(train)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    again = partition(train, num_partitions=5, partitioner="iid", seed=0)
    assert [p["image_id"] for p in again] == [p["image_id"] for p in parts]
    assert partition(train, num_partitions=5, partitioner="iid", seed=1)[0]["image_id"] != parts[0]["image_id"]
    assert load_partition(train, 2, 5, partitioner="iid", seed=0)["image_id"] == parts[2]["image_id"]


def answer_share(ds, answers):
    counts = Counter(ds["answer"])
    return np.array([counts[a] for a in answers]) / len(ds)


def test_dirichlet_partitions_are_reproducible_and_non_iid(digits):
    train, _ = split_holdout(digits, test_fraction=0.2, seed=0)
    answers = sorted(set(train["answer"]))
    options = dict(partitioner="dirichlet", alpha=0.1, min_partition_size=5, seed=0)
    parts = partition(train, 4, **options)
    assert [p["image_id"] for p in partition(train, 4, **options)] == [p["image_id"] for p in parts]
    assert load_partition(train, 1, 4, **options)["image_id"] == parts[1]["image_id"]
    assert sum((keys(p) for p in parts), Counter()) == keys(train)
    tv = lambda a, b: 0.5 * np.abs(answer_share(a, answers) - answer_share(b, answers)).sum()  # noqa: E731
    dirichlet_gap = max(tv(p, train) for p in parts)
    iid_gap = max(tv(p, train) for p in partition(train, 4, partitioner="iid", seed=0))
    assert dirichlet_gap > 0.3 > 0.1 > iid_gap


def test_pathological_partitions_hold_few_labels(shapes):
    colors = shapes.filter(lambda r: r["qtype"] == "color")
    parts = partition(colors, 5, partitioner="pathological", num_classes_per_partition=2,
                      class_assignment_mode="deterministic", seed=0)
    assert all(len(set(p["answer"])) == 2 for p in parts)
    assert sum(len(p) for p in parts) == len(colors)


# ----------------------------------------------------------------------------- tokenizer and batches


def test_tokenizer_round_trips_and_answers_are_single_tokens(tokenizer, digits, shapes, tmp_path):
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and tokenizer.pad_token_id == 0
    assert build_tokenizer([shapes, digits]).get_vocab() == vocab  # order of sources does not matter
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    assert loaded.get_vocab() == vocab
    sample = ["what colour is the circle ?", "is it greater than three ?", "an unseen word ?"]
    assert loaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert tokenizer("an unseen word ?")["input_ids"][:3] == [1, 1, 1]
    for answer in set(digits["answer"]) | set(shapes["answer"]):
        ids = loaded(answer, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != loaded.unk_token_id, answer
    for question in set(shapes["question"]):
        assert loaded.unk_token_id not in loaded(question)["input_ids"]


def test_collator_shapes_dtypes_and_right_padding(tokenizer, shapes):
    collator = VQACollator(tokenizer, image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    records = [shapes[i] for i in range(16)]
    batch = collator(records)
    assert batch["pixel_values"].shape == (16, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 16
    assert batch["lengths"].dtype == torch.long and batch["labels"].dtype == torch.long
    assert batch["qtype"] == [r["qtype"] for r in records]
    assert batch["input_ids"].shape[1] == int(batch["lengths"].max())
    for i, record in enumerate(records):
        n = int(batch["lengths"][i])
        assert n == len(record["question"].split())
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["input_ids"][i, :n] != tokenizer.pad_token_id).all()
        assert tokenizer.decode(batch["input_ids"][i, :n].tolist()) == record["question"]
        assert tokenizer.convert_ids_to_tokens(int(batch["labels"][i])) == record["answer"]
    raw = np.asarray(records[0]["image"], dtype=np.float32)[5, 7] / 255.0
    expected = (raw - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    np.testing.assert_allclose(batch["pixel_values"][0, :, 5, 7].numpy(), expected, rtol=1e-5)


def test_loader_order_is_reproducible(tokenizer, shapes):
    collator = VQACollator(tokenizer)

    def labels(seed):
        loader = make_loader(shapes, collator, batch_size=64, shuffle=True, seed=seed)
        return torch.cat([b["labels"] for b in loader]).tolist()

    first = labels(0)
    assert len(first) == len(shapes)
    assert labels(0) == first
    assert labels(1) != first
    batch = next(iter(make_loader(shapes, collator, batch_size=8)))
    assert batch["labels"].tolist() == [collator.answer_id(a) for a in shapes["answer"][:8]]


# ----------------------------------------------------------------------------- Hugging Face loader


def tiny_hf_dataset(n=6):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)) for i in range(n - 1)]
    images.append(Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)))  # grayscale
    return Dataset.from_dict(
        {
            "img": images,
            "query": [f"Is there a Cat #{i}?" for i in range(n)],
            "label": ["Yes", "no", "Fire Hydrant", "two.", "yes", "No"],
            "kind": ["yesno", "yesno", "what", "count", "yesno", "yesno"],
        }
    )


def test_hf_loader_reads_a_dataset_saved_to_disk(tmp_path):
    source = tiny_hf_dataset()
    source.save_to_disk(tmp_path / "tiny")
    ds = load_hf_vqa(str(tmp_path / "tiny"), image_column="img", question_column="query",
                     answer_column="label", qtype_column="kind", image_size=8)
    assert len(ds) == 6 and set(["image", "question", "answer", "qtype", "image_id"]) <= set(ds.column_names)
    images = ds.with_format("numpy")["image"][:]
    assert images.shape == (6, 8, 8, 3)
    assert ds["question"][0] == "is there a cat #0 ?"
    assert ds["answer"] == ["yes", "no", "fire_hydrant", "two", "yes", "no"]
    assert ds["qtype"] == source["kind"] and ds["image_id"] == list(range(6))
    expected = np.asarray(source[0]["img"].convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images[0], expected)
    # a DatasetDict with a chosen split, arrays as images, and the registry's "hf:" prefix
    arrays = Dataset.from_dict(
        {"image": [np.full((5, 5, 3), 7, np.uint8)] * 3, "question": ["a ?"] * 3, "answer": ["b"] * 3}
    )
    DatasetDict({"test": arrays}).save_to_disk(tmp_path / "dict")
    loaded = load_dataset(f"hf:{tmp_path / 'dict'}", split="test", image_size=4)
    assert loaded["qtype"] == ["all"] * 3 and (loaded.with_format("numpy")["image"][:] == 7).all()
    with pytest.raises(ValueError, match="split 'train' not found.*test"):
        load_hf_vqa(str(tmp_path / "dict"))


def test_hf_loader_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_hf_vqa(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_hf_vqa("./nope")
    with pytest.raises(FileNotFoundError, match="a/b/c"):
        load_hf_vqa("a/b/c")
    # "owner/name" is a hub id, not a path (not loaded here: no network)
    assert not _looks_like_path("HuggingFaceM4/VQAv2") and _looks_like_path("~/data")
    tiny_hf_dataset().save_to_disk(tmp_path / "tiny")
    with pytest.raises(ValueError, match=r"column 'image' not found.*available columns: img, query, label, kind"):
        load_hf_vqa(str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="column 'answer' not found"):
        load_hf_vqa(str(tmp_path / "tiny"), image_column="img", question_column="query")


# ----------------------------------------------------------------------------- bad inputs


def tiny():
    return Dataset.from_dict({"answer": ["a"] * 4})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_dataset("mnist-vqa"), r"unknown data set 'mnist-vqa'; known: digits-vqa, shapes-vqa, hf"),
        (lambda: load_dataset("digits-vqa", colour=True), r"unknown option\(s\) colour .*accepted: image_size"),
        (lambda: load_dataset("hf"), r"data set 'hf' needs option\(s\): path_or_name"),
        (lambda: make_digits_vqa(question_types=["digit", "x"]), r"unknown question type 'x'; known: digit"),
        (lambda: make_shapes_vqa(num_images=2, question_types=["parity"]), r"unknown question type 'parity'"),
        (lambda: make_digits_vqa(image_size=3), r"image_size must be at least 4, got 3"),
        (lambda: make_digits_vqa(interpolation="cubic"), r"unknown interpolation 'cubic'"),
        (lambda: make_digits_vqa(questions_per_image=9), r"questions_per_image must be"),
        (lambda: make_shapes_vqa(num_images=0), r"num_images must be a positive integer"),
        (lambda: make_shapes_vqa(num_images=2, max_objects=10), r"max_objects must be in 1..9"),
        (lambda: make_shapes_vqa(num_images=2, image_size=8), r"image_size must be at least 16"),
        (lambda: partition(tiny(), 2, "random"), r"unknown partitioner 'random'; known: iid, dirichlet, pathological"),
        (lambda: partition(tiny(), 0), r"num_partitions must be an integer >= 1, got 0"),
        (lambda: partition(tiny(), 5), r"cannot split 4 rows into 5 partitions"),
        (lambda: partition(tiny(), 2, "dirichlet", partition_by="label"), r"partition_by column 'label' not found"),
        (lambda: load_partition(tiny(), 3, 2), r"partition_id must be in 0..1, got 3"),
        (lambda: split_holdout(tiny(), 0.0), r"test_fraction must be in \(0, 1\), got 0.0"),
        (lambda: split_holdout(tiny(), 1.5), r"test_fraction must be in \(0, 1\), got 1.5"),
        (lambda: build_tokenizer([]), r"no words found"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_collator_rejects_multi_word_answers(tokenizer):
    collator = VQACollator(tokenizer)
    record = {"image": np.zeros((4, 4, 3), np.uint8), "question": "what ?", "answer": "two words", "qtype": "x"}
    with pytest.raises(ValueError, match="exactly one word, got 'two words'"):
        collator([record])
