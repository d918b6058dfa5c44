"""bench.conditioning: how far a prior's noise prediction moves between prompts."""

from __future__ import annotations

from bench.conditioning import TIMESTEPS, main, prompt_effect
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
