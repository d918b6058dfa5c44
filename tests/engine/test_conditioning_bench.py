"""bench.conditioning: how far a prior's noise prediction, and its samples, move with their conditioning."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.conditioning import TIMESTEPS, main, prompt_effect, sample_effect
from engine.config import GenerationConfig
from engine.data import list_images
from engine.generation.generate import generate
from engine.generation.pipeline import load_pipeline


def test_identical_prompts_move_nothing_and_different_tokens_move_the_prediction(tiny_model, tiny_adapter, capsys):
    loaded = load_pipeline(tiny_model, adapter=tiny_adapter)
    same = prompt_effect(loaded.pipe, ["a steel surface", "a steel surface"], draws=2)
    assert set(same) == set(TIMESTEPS) and all(v == 0 for v in same.values())
    tokens = [f"a steel surface with {t}" for t in loaded.tokens.values()]
    moved = prompt_effect(loaded.pipe, tokens, draws=2)
    assert all(v > 0 for v in moved.values())
    assert prompt_effect(loaded.pipe, tokens, draws=2) == moved
    main(["--model", str(tiny_model), "--adapter", str(tiny_adapter), "--draws", "2"])
    out = capsys.readouterr().out
    assert "defect tokens" in out and "appearance captions" in out and "t=999" in out


def test_sample_effect_compares_each_change_with_a_new_seed_and_leaves_the_lora_on(
    tiny_model, tiny_adapter, tiny_dataset, capsys
):
    loaded = load_pipeline(tiny_model, adapter=tiny_adapter)
    inits = {c: Image.open(list_images(tiny_dataset / c)[0]).convert("RGB") for c in ("scratches", "inclusion")}
    config = GenerationConfig("scratches", 2, 0.6, 4, seed=0)
    before = generate(loaded, inits["scratches"], config).candidates
    effect = sample_effect(loaded, inits, strength=0.6, steps=4)
    assert set(effect) == {"scratches", "inclusion"}
    for row in effect.values():
        assert set(row) == {"noise seed", "guidance 1", "other token", "LoRA off"}
        assert row["noise seed"] > 0 and all(value >= 0 for value in row.values())
    after = generate(loaded, inits["scratches"], config).candidates
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(before, after, strict=True))
    main(["--model", str(tiny_model), "--adapter", str(tiny_adapter), "--draws", "1", "--init-root", str(tiny_dataset)])
    out = capsys.readouterr().out
    assert "Change of the samples" in out and "LoRA off" in out and "scratches" in out
