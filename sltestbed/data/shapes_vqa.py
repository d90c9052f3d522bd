"""shapes-VQA: seeded scenes of coloured squares, circles and triangles, and questions about them.

A scene places 1..max_objects shapes in distinct cells of a 3 x 3 grid (so they never overlap)
on a black background. Question types (answers are single words):
    color     "what colour is the circle ?"                 -> "red" ...  (shape occurs once)
    shape     "what shape is the red object ?"              -> "circle"   (colour occurs once)
    count     "how many squares are there ?"                -> "zero" .. "nine"
    position  "which column is the red object in ?"         -> "left" / "middle" / "right"
              "which row is the red object in ?"            -> "top" / "middle" / "bottom"
              (the colour occurs once; rows and columns are the thirds of the image, and
              every object lies inside one grid cell)
    relation  "is the red object left of the blue object ?" -> "yes" / "no"
              (also "right of", "above", "below"; both colours occur once and the two
              objects' extents do not overlap along the asked axis)
Each scene gets at most one question per type; a type with no unambiguous question is skipped.
"position" and "relation" follow Sort-of-CLEVR's non-relational and relational questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from .records import check_image_size, check_question_types, make_vqa_dataset
from .text import NUMBER_WORDS

QUESTION_TYPES = ("color", "shape", "count", "position", "relation")
SHAPES = ("square", "circle", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
}
BACKGROUND = (0, 0, 0)
GRID = 3
MIN_IMAGE_SIZE = 16
RELATIONS = ("left of", "right of", "above", "below")
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "middle", "bottom")


@dataclass(frozen=True)
class ShapeObject:
    """One shape: centre (x right, y down) and half-extent, in pixels; the grid cell it lies in."""

    shape: str
    color: str
    x: float
    y: float
    half: float
    row: int
    col: int


def make_shapes_vqa(
    num_images: int = 2000,
    image_size: int = 32,
    max_objects: int = 4,
    question_types: Sequence[str] = QUESTION_TYPES,
    seed: int = 0,
) -> Dataset:
    """shapes-VQA in the common record format; `image_id` indexes `generate_scenes(...)`."""
    question_types = check_question_types(question_types, QUESTION_TYPES)
    scenes = generate_scenes(num_images, image_size, max_objects, seed)
    images = np.stack([render_scene(scene, image_size) for scene in scenes])
    rng = np.random.default_rng([seed, 1])  # questions: a stream separate from the scenes'
    questions, answers, qtypes, image_ids = [], [], [], []
    for image_id, scene in enumerate(scenes):
        for qtype in question_types:
            pair = ask(qtype, scene, rng)
            if pair is None:
                continue
            questions.append(pair[0])
            answers.append(pair[1])
            qtypes.append(qtype)
            image_ids.append(image_id)
    return make_vqa_dataset(images[image_ids], questions, answers, qtypes, image_ids)


def generate_scenes(
    num_images: int = 2000, image_size: int = 32, max_objects: int = 4, seed: int = 0
) -> list[list[ShapeObject]]:
    """`num_images` random scenes, each with 1..max_objects objects; deterministic given `seed`."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    image_size = check_image_size(image_size, MIN_IMAGE_SIZE)
    if not 1 <= max_objects <= GRID * GRID:
        raise ValueError(f"max_objects must be in 1..{GRID * GRID}, got {max_objects}")
    rng = np.random.default_rng([seed, 0])
    cell = image_size / GRID
    colors = list(COLORS)
    scenes = []
    for _ in range(num_images):
        count = int(rng.integers(1, max_objects + 1))
        cells = rng.choice(GRID * GRID, size=count, replace=False)
        scene = []
        for c in cells:
            row, col = divmod(int(c), GRID)
            half = cell * rng.uniform(0.3, 0.45)
            x = col * cell + rng.uniform(half, cell - half)
            y = row * cell + rng.uniform(half, cell - half)
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = colors[int(rng.integers(len(colors)))]
            scene.append(ShapeObject(shape, color, float(x), float(y), float(half), row, col))
        scenes.append(scene)
    return scenes


def render_scene(scene: Sequence[ShapeObject], image_size: int) -> np.ndarray:
    """Draw a scene as a uint8 image_size x image_size x 3 array (pixel centres tested against each shape)."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    for obj in scene:
        image[shape_mask(obj, xs, ys)] = COLORS[obj.color]
    return image


def shape_mask(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels whose centres (xs, ys) lie inside `obj`."""
    dx, dy = xs - obj.x, ys - obj.y
    if obj.shape == "square":
        return (np.abs(dx) <= obj.half) & (np.abs(dy) <= obj.half)
    if obj.shape == "circle":
        return dx**2 + dy**2 <= obj.half**2
    if obj.shape == "triangle":  # apex up, base at the bottom
        depth = dy + obj.half  # 0 at the apex, 2 * half at the base
        return (depth >= 0) & (depth <= 2 * obj.half) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")


def ask(qtype: str, scene: Sequence[ShapeObject], rng: np.random.Generator) -> tuple[str, str] | None:
    """One unambiguous (question, answer) pair of type `qtype` about `scene`, or None if there is none."""
    shape_counts = Counter(obj.shape for obj in scene)
    color_counts = Counter(obj.color for obj in scene)
    by_shape = [obj for obj in scene if shape_counts[obj.shape] == 1]  # objects named unambiguously by their shape
    by_color = [obj for obj in scene if color_counts[obj.color] == 1]  # ... by their colour
    if qtype == "color":
        obj = _pick(by_shape, rng)
        return None if obj is None else (f"what colour is the {obj.shape} ?", obj.color)
    if qtype == "shape":
        obj = _pick(by_color, rng)
        return None if obj is None else (f"what shape is the {obj.color} object ?", obj.shape)
    if qtype == "count":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        return f"how many {shape}s are there ?", NUMBER_WORDS[shape_counts[shape]]
    if qtype == "position":
        obj = _pick(by_color, rng)
        if obj is None:
            return None
        if rng.integers(2):
            return f"which row is the {obj.color} object in ?", ROWS[obj.row]
        return f"which column is the {obj.color} object in ?", COLUMNS[obj.col]
    if qtype == "relation":
        triples = [
            (a, b, relation)
            for a in by_color
            for b in by_color
            if a is not b
            for relation in RELATIONS
            if _separated(a, b, relation)
        ]
        picked = _pick(triples, rng)
        if picked is None:
            return None
        a, b, relation = picked
        answer = "yes" if relation_holds(a, b, relation) else "no"
        return f"is the {a.color} object {relation} the {b.color} object ?", answer
    raise ValueError(f"unknown shapes-VQA question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


def _pick(candidates: list, rng: np.random.Generator):
    """One of `candidates` drawn with `rng`, or None (and no draw) when there are none."""
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Whether `a` is `relation` `b`, comparing centres (y grows downwards)."""
    if relation == "left of":
        return a.x < b.x
    if relation == "right of":
        return a.x > b.x
    if relation == "above":
        return a.y < b.y
    if relation == "below":
        return a.y > b.y
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


def _separated(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """True when the two objects' extents do not overlap along the relation's axis."""
    if relation in ("left of", "right of"):
        return abs(a.x - b.x) > a.half + b.half
    return abs(a.y - b.y) > a.half + b.half
