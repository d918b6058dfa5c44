"""Appearance captions: measured words for what an image looks like, within the vocabulary, never its class."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.training.attributes import AppearanceScale, appearance_captions, measure, shared_words
from engine.training.loop import TrainingImage, init_words_for
from engine.training.pretrain import collect_pretrain_samples
from engine.training.prior import VOCABULARY_WORDS


def grey(array: np.ndarray) -> np.ndarray:
    return np.clip(array, 0, 255).astype(np.uint8)


def textured(seed: int, level: float = 128, grain: float = 10) -> np.ndarray:
    return grey(np.random.default_rng(seed).normal(level, grain, (96, 96)))


def with_lines(seed: int, vertical: bool) -> np.ndarray:
    image = textured(seed, grain=4).astype(np.float32)
    for position in (20, 48, 76):
        if vertical:
            image[:, position - 1 : position + 2] = 230
        else:
            image[position - 1 : position + 2, :] = 230
    return grey(image)


def with_spots(seed: int) -> np.ndarray:
    image = textured(seed, grain=4).astype(np.float32)
    rng = np.random.default_rng(seed + 100)
    for y, x in rng.integers(4, 92, (40, 2)):
        image[y - 1 : y + 2, x - 1 : x + 2] = 40
    return grey(image)


def test_measures_read_brightness_lines_spots_and_streaks():
    dark, bright = measure(textured(0, level=60)), measure(textured(0, level=200))
    assert dark.brightness < 0.3 < 0.7 < bright.brightness
    vertical, horizontal = measure(with_lines(1, True)), measure(with_lines(1, False))
    plain = measure(textured(1, grain=4))
    assert vertical.line_strength > 0.5 and horizontal.line_strength > 0.5 and plain.line_strength < 0.3
    assert abs(vertical.line_angle - 90) < 10 and min(horizontal.line_angle, 180 - horizontal.line_angle) < 10
    assert vertical.bright_streaks > 0.9 and plain.bright_streaks < 0.2
    assert measure(with_spots(2)).dark_spots > 10 * max(plain.dark_spots, 0.1)
    # A grey image is measured alike whether it comes as H×W or as grey replicated to H×W×3.
    assert measure(np.repeat(with_spots(2)[..., None], 3, axis=2)) == measure(with_spots(2))
    # A colour image is measured on its luminance: a blue tint hides no spots and its red channel is not read alone.
    tinted = np.stack([with_spots(2) // 4, with_spots(2) // 2, with_spots(2)], axis=2)
    assert measure(tinted).brightness > 0.4 * measure(with_spots(2)).brightness
    assert measure(tinted).dark_spots > 10 * max(plain.dark_spots, 0.1)


def test_words_come_from_where_an_image_falls_in_its_data_and_are_in_the_vocabulary():
    images = [with_lines(s, True) for s in range(4)] + [with_spots(s) for s in range(4)]
    images += [textured(s, level=level) for s, level in enumerate((70, 110, 150, 190))]
    captions = appearance_captions(["a steel surface"] * len(images), images)
    assert all(c.startswith("a steel surface") for c in captions)
    assert all("vertical lines" in c and "thin bright streaks" in c for c in captions[:4])
    assert all("small dark spots" in c for c in captions[4:8])
    assert not any("lines" in c or "spots" in c for c in captions[8:])
    assert "dark" in captions[8].split(", ") and "bright" in captions[11].split(", ")
    vocabulary = set(VOCABULARY_WORDS)
    assert {w for c in captions for w in c.replace(",", " ").split()} <= vocabulary
    # The same image reads differently among other data: the words are relative to the training set.
    brighter = [textured(s, level=230) for s in range(4)]
    assert "bright" not in appearance_captions(["x"] * 5, [images[11], *brighter])[0]


def test_scale_and_captions_refuse_what_they_cannot_describe():
    with pytest.raises(ValueError, match="at least one image"):
        AppearanceScale.fit([])
    with pytest.raises(ValueError, match="2 caption stems for 1 images"):
        appearance_captions(["a", "b"], [textured(0)])


def test_pretrain_samples_carry_appearance_captions_only_when_asked(tmp_path):
    folder = tmp_path / "slabs"
    folder.mkdir()
    for seed in range(3):
        Image.fromarray(with_lines(seed, True)).save(folder / f"lines_{seed}.png")
        Image.fromarray(with_spots(seed)).save(folder / f"spots_{seed}.png")
    generic = collect_pretrain_samples(folder, 32)
    described = collect_pretrain_samples(folder, 32, captions="appearance")
    assert [s.caption for s in described] != [s.caption for s in generic]
    assert all(d.caption.startswith(g.caption) for g, d in zip(generic, described, strict=True))
    assert any("vertical lines" in s.caption for s in described)
    with pytest.raises(ValueError, match="Unknown captions"):
        collect_pretrain_samples(folder, 32, captions="classes")


def test_a_training_config_refuses_unknown_captions():
    from engine.config import TrainConfig

    with pytest.raises(ValueError, match="captions must be one of generic, appearance"):
        TrainConfig(mode="pretrain", captions="classes")


def test_shared_words_name_what_most_of_a_class_carries_among_its_set():
    words = shared_words(
        {
            "type 1": [with_lines(s, True) for s in range(3)] + [textured(9, grain=4)],
            "type 2": [with_spots(s) for s in range(4)],
            "type 3": [textured(s, grain=4) for s in range(4)],
        }
    )
    assert {"vertical lines", "thin bright streaks"} <= set(words["type 1"])
    assert "small dark spots" in words["type 2"] and "vertical lines" not in words["type 2"]
    assert not {"vertical lines", "small dark spots"} & set(words["type 3"])
    assert shared_words({"type 1": []}) == {"type 1": []}


def test_tokens_of_classes_with_uninformative_names_start_apart_near_what_their_images_look_like(tiny_model):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_model), subfolder="tokenizer")
    rgb = lambda image: np.repeat(image[..., None], 3, axis=2)  # noqa: E731
    images = [TrainingImage(rgb(with_lines(s, True)), "mill type 1") for s in range(3)]
    images += [TrainingImage(rgb(with_spots(s)), "mill type 2") for s in range(3)]
    images += [TrainingImage(rgb(textured(s, level=50)), "edge crack") for s in range(3)]
    images += [TrainingImage(rgb(textured(s)), "scratches") for s in range(3)]
    images += [TrainingImage(rgb(textured(s, level=200)), "surface scratch") for s in range(3)]
    classes = ["mill type 1", "mill type 2", "edge crack", "scratches", "surface scratch"]
    words = init_words_for(classes, images, tokenizer)
    # Shared or unknown name words ("mill", "type", "1") say nothing; the class's own images do.
    assert words["mill type 1"].startswith("defect ") and "vertical lines" in words["mill type 1"]
    assert words["mill type 2"].startswith("defect ") and "small dark spots" in words["mill type 2"]
    assert words["edge crack"].startswith("crack dark") and words["scratches"] == "scratches"
    # A compound's head names the defect: "surface" and "scratch" are both known, the name ends in what it is.
    assert words["surface scratch"].startswith("scratch ")
    assert all(len(tokenizer.tokenize(w)) == 1 for phrase in words.values() for w in phrase.split())
