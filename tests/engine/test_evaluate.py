"""Evaluation on toy images (stripes vs blobs): KID/FID, recognition, realism, two-sample test, strength sweep."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters import save_tuned_strength
from engine.data import export_neu_split, list_images, read_image_folder
from engine.evaluation.features import FeatureNetConfig, fit_feature_network, load_feature_net, save_feature_net
from engine.evaluation.fidelity import InceptionFeatures, fidelity, two_sample_test
from engine.evaluation.realism import MIN_FEW_SHOT_REFERENCES, RealismScorer, class_realism_scorer
from engine.evaluation.recognition import classic_augment, per_class_table, recognition
from engine.evaluation.tuning import tune_strength

SIZE = 32
CLASSES = ("blobs", "stripes")


def toy_image(rng: np.random.Generator, kind: str) -> Image.Image:
    """A 32 px grey texture: vertical dark stripes or bright square blobs on noise."""
    pixels = rng.normal(128, 10, (SIZE, SIZE))
    if kind == "stripes":
        for x in rng.choice(np.arange(2, SIZE - 3), 3, replace=False):
            pixels[:, x : x + 2] = 40
    else:
        for y, x in rng.integers(2, SIZE - 6, (3, 2)):
            pixels[y : y + 5, x : x + 5] = 230
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_tree(root: Path, contents: dict[str, str], count: int, seed: int) -> Path:
    """`root/<folder>/` holding `count` images of the kind mapped to each folder name."""
    rng = np.random.default_rng(seed)
    for folder, kind in contents.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            toy_image(rng, kind).save(root / folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy models are tiny: one thread is faster than two fighting over a loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    same = {c: c for c in CLASSES}
    return {
        "train": write_tree(root / "train", same, 16, seed=0),
        "real": write_tree(root / "real", same, 24, seed=1),
        "gen_same": write_tree(root / "gen_same", same, 24, seed=2),
        "gen_swapped": write_tree(root / "gen_swapped", {"blobs": "stripes", "stripes": "blobs"}, 24, seed=3),
    }


@pytest.fixture(scope="module")
def toy_net(toy):
    torch.manual_seed(0)
    config = FeatureNetConfig(classes=list(CLASSES), input_size=SIZE, widths=[8, 16, 32])
    return fit_feature_network(read_image_folder(toy["train"]), [], config, epochs=8, batch_size=8).net


def test_kid_near_zero_for_the_same_distribution_and_large_for_another(toy, toy_net):
    identical = fidelity(toy["real"], toy["real"], feature_net=toy_net)
    same = fidelity(toy["gen_same"], toy["real"], reference_dir=toy["train"], feature_net=toy_net)
    swapped = fidelity(toy["gen_swapped"], toy["real"], feature_net=toy_net)
    for c in range(len(CLASSES)):
        far = swapped.classes[c].distance
        assert abs(identical.classes[c].distance.kid_mean) < 0.05 * far.kid_mean
        assert abs(same.classes[c].distance.kid_mean) < 0.1 * far.kid_mean
        assert same.classes[c].distance.fid < 0.2 * far.fid
        assert same.classes[c].reference.kid_mean < 0.1 * far.kid_mean
    assert same.overall.recognition_rate >= 0.9
    assert swapped.overall.recognition_rate <= 0.1
    assert 0 <= swapped.overall.mean_confidence <= 1
    assert "stripes" in same.table() and "ref KID" in same.table()
    json.dumps(same.to_dict())


def test_fidelity_rejects_a_missing_class_and_missing_inception_weights(toy, toy_net, tmp_path):
    partial = write_tree(tmp_path / "partial", {"blobs": "blobs"}, 2, seed=4)
    with pytest.raises(ValueError, match="stripes"):
        fidelity(toy["real"], partial, feature_net=toy_net)
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_two_sample_test_is_near_chance_only_for_the_same_distribution(toy, toy_net, tmp_path):
    off = write_tree(tmp_path / "off", {"stripes": "blobs"}, 24, seed=5)
    same = two_sample_test(toy["gen_same"], toy["real"], seeds=2, feature_net=toy_net)
    different = two_sample_test(off, toy["real"], seeds=2, feature_net=toy_net)
    assert same.accuracy_mean < 0.75
    assert different.accuracy_mean > 0.9
    assert different.classes == ["stripes"] and different.n_per_side == 24


def test_realism_scorer_ranks_in_distribution_above_out_of_distribution(toy, toy_net):
    scorer = RealismScorer.from_folder(toy_net, toy["real"])
    rng = np.random.default_rng(7)
    stripe, blob = toy_image(rng, "stripes"), toy_image(rng, "blobs")
    good, bad = scorer.score(stripe, "stripes"), scorer.score(blob, "stripes")
    assert good.score > bad.score
    assert good.predicted_class == "stripes" and bad.predicted_class == "blobs"
    assert 0 <= bad.score <= good.score <= 1
    assert good.knn_distance < bad.knn_distance
    with pytest.raises(ValueError, match="no reference|No reference"):
        scorer.score(stripe, "crazing")


def test_a_few_images_of_a_new_class_are_their_own_reference_with_their_flips_and_rotations():
    rng = np.random.default_rng(11)
    stripes = [toy_image(rng, "stripes") for _ in range(5)]
    new_images = [toy_image(rng, "stripes"), toy_image(rng, "blobs")]
    steel_net = load_feature_net()
    assert class_realism_scorer("grooves", stripes[: MIN_FEW_SHOT_REFERENCES - 1], steel_net, shipped={}) is None
    fewest, reference = class_realism_scorer("grooves", stripes[:MIN_FEW_SHOT_REFERENCES], steel_net, shipped={})
    assert reference == f"{MIN_FEW_SHOT_REFERENCES} of the class's own real images with their flips and rotations"
    new_stripe, blob = fewest.score_many(new_images, "grooves")
    assert new_stripe.class_probability is None and blob.class_probability is None
    assert blob.score < new_stripe.score
    scorer, _ = class_realism_scorer("grooves", stripes, steel_net, shipped={})
    new_stripe, blob = scorer.score_many(new_images, "grooves")
    # A real image's distance leaves out its own variants, so a new image of the class falls inside the real
    # distances rather than beyond all of them (as it would against an image's distance to its own flips).
    assert new_stripe.distance_percentile < 1.0 and blob.distance_percentile == 1.0


def test_recognition_protocol_end_to_end(toy):
    report = recognition(
        toy["train"],
        toy["real"],
        synthetic_dir=toy["gen_same"],
        k=2,
        seeds=2,
        classic_augment_per_class=4,
        steps=12,
        batch_size=8,
        image_size=SIZE,
    )
    names = [arm.name for arm in report.arms]
    assert names == ["real", "real+synthetic", "synthetic", "real+classic", "real+classic+synth"]
    sizes = {arm.name: arm.train_sizes[0] for arm in report.arms}
    assert sizes == {"real": 4, "real+synthetic": 52, "synthetic": 48, "real+classic": 12, "real+classic+synth": 60}
    test_per_class = {c: len(list_images(toy["real"] / c)) for c in report.classes}
    for arm in report.arms:
        assert len(arm.accuracies) == 2 and all(0 <= a <= 1 for a in arm.accuracies)
        assert (arm.gain is None) == (arm.name == "real")
        # The confusion counts every test image once per seed, and its diagonal is the accuracy.
        counts = np.asarray(arm.confusion)
        assert counts.sum(axis=1).tolist() == [2 * test_per_class[c] for c in report.classes]
        assert np.trace(counts) / counts.sum() == pytest.approx(np.mean(arm.accuracies), abs=1e-4)
        recall = arm.recall(report.classes)
        assert list(recall) == report.classes
        assert recall == {c: round(counts[i, i] / counts[i].sum(), 4) for i, c in enumerate(report.classes)}
    assert report.n_test == 48 and "real+classic" in report.table()
    assert "Recall per class" in report.table()


def test_classic_augment_keeps_size_and_changes_pixels():
    import random

    image = toy_image(np.random.default_rng(8), "stripes").resize((64, 64))
    first = classic_augment(image, random.Random(0))
    again = classic_augment(image, random.Random(0))
    assert first.size == image.size and first.mode == "L"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(image))


def test_a_colour_mill_is_recognised_in_colour_and_a_grey_one_in_grey(tmp_path):
    import random

    # Two classes with the same grey texture that only their tint tells apart: only a recognizer seeing colour can.
    def tinted_tree(root: Path, count: int, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        for folder, gains in {"warm scale": (1.2, 1.0, 0.7), "cold scale": (0.7, 1.0, 1.2)}.items():
            (root / folder).mkdir(parents=True)
            for i in range(count):
                grey = np.asarray(toy_image(rng, "blobs"), dtype=np.float64)
                rgb = (grey[..., None] * np.asarray(gains) * rng.uniform(0.8, 1.2)).clip(0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(root / folder / f"IMG {i}.jpg", quality=95)
        return root

    train, test = tinted_tree(tmp_path / "train", 8, 0), tinted_tree(tmp_path / "test", 12, 1)
    colour = recognition(
        train, test, k=4, seeds=1, classic_augment_per_class=4, steps=60, batch_size=8, image_size=SIZE
    )
    assert colour.colour and "colour" in colour.table().splitlines()[0]
    assert all(arm.mean >= 0.9 for arm in colour.arms), colour.table()
    augmented = classic_augment(Image.open(next((train / "warm scale").iterdir())), random.Random(0))
    red, _, blue = np.asarray(augmented, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert augmented.mode == "RGB" and red > blue, "classic augmentation keeps a colour image's colour"

    for folder in (train, test):
        for path in folder.rglob("*.jpg"):
            Image.open(path).convert("L").save(path)
    grey = recognition(train, test, k=4, seeds=1, steps=60, batch_size=8, image_size=SIZE)
    assert not grey.colour and grey.arms[0].mean <= 0.75, "in grey the two classes are one texture"


def test_strength_sweep_picks_the_setting_that_matches_the_real_images(toy, toy_net, tmp_path):
    rng = np.random.default_rng(9)

    def generate_fn(strength: float) -> list[Image.Image]:
        return [toy_image(rng, "stripes" if strength == 0.4 else "blobs") for _ in range(12)]

    report = tune_strength(generate_fn, "stripes", toy["real"], strengths=(0.4, 0.9), feature_net=toy_net)
    assert report.best_strength == 0.4 and report.lowest_kid_strength == 0.4
    assert report.rows[0].kid_mean < report.rows[1].kid_mean
    assert report.rows[0].recognition_rate > report.rows[1].recognition_rate

    from engine.adapters import read_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    entry = {"token": "<stripes>", "embedding_file": "stripes.safetensors", "init_word": "lines"}
    (adapter / "tokens.json").write_text(json.dumps({"tokens": {"stripes": entry}, "base_model_hash": "x"}))
    save_tuned_strength(adapter, "stripes", report.best_strength)
    assert read_adapter(adapter).tokens["stripes"].default_strength == 0.4
    with pytest.raises(ValueError, match="no token"):
        save_tuned_strength(adapter, "blobs", 0.5)


def test_feature_net_round_trip_and_cli(toy, toy_net, tmp_path, capsys):
    folder = tmp_path / "features"
    save_feature_net(toy_net, folder)
    loaded = load_feature_net(folder)
    x = torch.rand(3, 1, SIZE, SIZE)
    assert torch.allclose(loaded(x), toy_net.eval()(x), atol=1e-6)
    assert json.loads((folder / "config.json").read_text())["classes"] == list(CLASSES)

    from launch import main

    args = ["--generated", str(toy["gen_same"]), "--real", str(toy["real"]), "--feature-net", str(folder), "--json"]
    assert main(["evaluate", "two-sample", *args, "--seeds", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["folds"] == 5
    assert main(["evaluate", "fidelity", *args[:-1]]) == 0
    assert "KID" in capsys.readouterr().out


def test_neu_split_writes_links_outside_the_repository_only(tmp_path):
    neu = tmp_path / "neu"
    rows = ["image,cls,index,annotation"]
    for cls in ("crazing", "scratches"):
        (neu / "images" / cls).mkdir(parents=True)
        for index in range(1, 8):
            Image.new("L", (8, 8), index * 20).save(neu / "images" / cls / f"{cls}_{index}.bmp")
            annotation = f"annotations/{cls}_{index}.xml" if cls == "crazing" else ""
            rows.append(f"images/{cls}/{cls}_{index}.bmp,{cls},{index},{annotation}")
    (neu / "annotations").mkdir()
    for index in range(1, 8):
        (neu / "annotations" / f"crazing_{index}.xml").write_text("<annotation></annotation>")
    (neu / "manifest.csv").write_text("\n".join(rows) + "\n")
    counts = export_neu_split(neu, tmp_path / "split")
    assert counts == {"pool": 10, "val": 4}
    linked = tmp_path / "split" / "val" / "crazing" / "crazing_1.bmp"
    assert linked.is_symlink() and linked.resolve() == (neu / "images" / "crazing" / "crazing_1.bmp").resolve()
    # Annotations are linked beside their images (for the masked loss); images without one get none.
    assert linked.with_suffix(".xml").resolve() == (neu / "annotations" / "crazing_1.xml").resolve()
    assert not (tmp_path / "split" / "val" / "scratches" / "scratches_1.xml").exists()
    with pytest.raises(ValueError, match="inside the repository"):
        export_neu_split(neu, Path(__file__).parent / "neu-split")


def test_tune_adapter_strength_generates_and_stores_the_choice(
    tiny_model, tiny_adapter, tiny_dataset, toy_net, tmp_path
):
    import shutil

    from engine.adapters import read_adapter
    from engine.evaluation.tuning import tune_adapter_strength

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    report = tune_adapter_strength(
        adapter,
        "scratches",
        tiny_dataset,
        init=tiny_dataset / "scratches",
        strengths=(0.5, 1.0),
        num=2,
        model=str(tiny_model),
        steps=2,
        feature_net=toy_net,
    )
    assert [row.strength for row in report.rows] == [0.5, 1.0] and all(row.n == 2 for row in report.rows)
    assert read_adapter(adapter).tokens["scratches"].default_strength == report.best_strength
    assert report.saved_to == str(adapter / "tokens.json")


def test_recognition_names_an_image_it_cannot_read(toy, tmp_path):
    test = shutil.copytree(toy["real"], tmp_path / "test")
    broken = test / "stripes" / "broken.png"
    broken.write_text("not an image")
    settings = {"k": 2, "seeds": 1, "steps": 2, "batch_size": 8, "image_size": SIZE}
    with pytest.raises(ValueError, match=re.escape(f"Cannot read image {broken}")):
        recognition(toy["train"], test, **settings)


def test_recognition_trains_only_the_arms_asked_for_and_names_those_it_cannot(toy):
    settings = {"k": 2, "seeds": 1, "steps": 6, "batch_size": 8, "image_size": SIZE, "classic_augment_per_class": 4}
    full = recognition(toy["train"], toy["real"], synthetic_dir=toy["gen_same"], **settings)
    some = recognition(
        toy["train"], toy["real"], toy["gen_same"], arms=["real+classic", "real+classic+synth"], **settings
    )
    assert [arm.name for arm in some.arms] == ["real+classic", "real+classic+synth"]
    assert all(arm.gain is None for arm in some.arms)
    # The classic augmentations and the recognizers are those of the full protocol.
    by_name = {arm.name: arm.accuracies for arm in full.arms}
    assert all(arm.accuracies == by_name[arm.name] for arm in some.arms)
    with pytest.raises(ValueError, match="real\\+synthetic need inputs not given"):
        recognition(toy["train"], toy["real"], arms=["real", "real+synthetic"], **settings)


def test_per_class_tables_keep_class_names_that_share_their_first_dozen_characters_apart():
    classes = ["colour type 1", "colour type 2", "oxide scale of temperature system"]
    rows = [("real", dict(zip(classes, (0.5, 0.25, 1.0), strict=True)), ".3f")]
    rows.append(("ours - classic", dict(zip(classes, (10.0, -2.5, 0.0), strict=True)), "+.1f"))
    header, real, gain = per_class_table(rows, classes, 16, corner="arm")
    assert header.split("  ")[0] == "arm" and all(f" {name}" in header for name in classes)
    assert real.split()[1:] == ["0.500", "0.250", "1.000"] and gain.split()[-3:] == ["+10.0", "-2.5", "+0.0"]
    assert len({len(line) for line in (header, real, gain)}) == 1, "the columns line up"
