"""Wrong command-line input: exit code 2 and one readable `error:` line, before any model work where possible."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pytest
from hardening_support import encode
from PIL import Image

import launch


def expect_error(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    """`launch.main(argv)` exits 2, and the last line on stderr is the one `error:` line, containing `message`."""
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert message in lines[-1], lines[-1]


@pytest.fixture
def slab(tmp_path: Path) -> Path:
    path = tmp_path / "slab.png"
    path.write_bytes(encode(Image.new("L", (48, 40), 128)))
    return path


@pytest.fixture
def not_a_model(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "weights.ckpt").write_bytes(b"\0" * 16)
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strength", "1.5"], "Strength must be in (0, 1], got 1.5."),
        (["--strength", "0"], "Strength must be in (0, 1], got 0.0."),
        (["--seed", "-1"], "Seed must be between 0 and 2**32-1, got -1."),
        (["--seed", str(2**32)], f"Seed must be between 0 and 2**32-1, got {2**32}."),
        (["--steps", "0"], "Steps must be between 1 and 500, got 0."),
        (["--num", "0"], "--num must be at least 1."),
        (["--num", "100", "--batch", "65"], "Number of candidates must be between 1 and 64, got 65."),
        (["--guidance", "-1"], "Guidance scale must be between 0 and 30, got -1.0."),
        (["--init-mix", "source=1,collage=2"], "Unknown init kind(s) collage; choose from source, geometric,"),
        (["--init-mix", "warp=-1"], "Init kind shares must not be negative: warp=-1.0."),
    ],
)
def test_generate_settings_out_of_range_exit_2_before_loading_a_model(
    extra: list[str], message: str, slab: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The model does not exist: reaching it would report that instead.
    argv = ["generate", "--token", "crazing", "--init", str(slab), "--out", str(tmp_path / "out")]
    expect_error([*argv, "--model", str(tmp_path / "no-such-model"), *extra], message, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strength-floor", "0"], "argument --strength-floor: a strength floor is in (0, 1] or 'off', got 0"),
        (["--realism-threshold", "1.5"], "argument --realism-threshold: a realism threshold is in [0, 1] or 'off'"),
        (["--quarter-turns", "1.5"], "argument --quarter-turns: expected 'auto' or a share in [0, 1]: The share"),
        (["--quarter-turns", "half"], "argument --quarter-turns: expected 'auto' or a share in [0, 1]: could not"),
    ],
)
def test_gate_settings_out_of_range_are_usage_errors(
    extra: list[str], message: str, slab: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        launch.main(["generate", "--token", "crazing", "--init", str(slab), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_unknown_tokens_missing_files_and_unreadable_images_exit_2(
    tiny_model: Path, tiny_adapter: Path, slab: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    text = tmp_path / "notes.png"
    text.write_text("not an image")

    def generate(token: str, init: Path, adapter: Path = tiny_adapter) -> list[str]:
        return ["generate", "--model", str(tiny_model), "--adapter", str(adapter), "--out", str(out)] + [
            "--token",
            token,
            "--init",
            str(init),
        ]

    expect_error(generate("rust", slab), "Unknown defect token 'rust'; known tokens: inclusion, scratches.", capsys)
    expect_error(generate("scratches", tmp_path / "nope.png"), "Init image or folder not found", capsys)
    expect_error(generate("scratches", text), "Cannot read image", capsys)
    expect_error(generate("scratches", slab, adapter=tmp_path), "is not a finished adapter folder", capsys)
    assert not out.exists() or not any(out.iterdir())


def test_a_folder_that_is_not_a_diffusers_model_exits_2_for_every_command(
    not_a_model: Path,
    slab: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = f"{not_a_model} is not a diffusers model folder (it has no model_index.json)."
    model = ["--model", str(not_a_model)]
    expect_error(
        ["generate", *model, "--token", "crazing", "--init", str(slab), "--out", str(tmp_path / "o")], message, capsys
    )
    expect_error(["finetune", *model, "--dataset", str(tiny_dataset), "--out", str(tmp_path / "run")], message, capsys)
    launched: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    expect_error(["--data-dir", str(tmp_path / "data"), *model], message, capsys)
    assert launched == [], "the app never starts serving on a wrong model"


def test_finetune_settings_out_of_range_exit_2(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ["finetune", "--model", str(tiny_model), "--dataset", str(tiny_dataset), "--out", str(tmp_path / "run")]
    expect_error([*common, "--checkpointing-steps", "0"], "checkpointing_steps must be at least 1.", capsys)
    expect_error([*common, "--steps", "-5"], "max_train_steps must be at least 1.", capsys)
    expect_error([*common, "--preset", "turbo"], "Unknown preset 'turbo'", capsys)
    expect_error([*common, "--caption-dropout", "1.5"], "caption_dropout must be in [0, 1), got 1.5.", capsys)
    expect_error([*common, "--lora-rank", "0"], "lora_rank must be at least 1, got 0.", capsys)
    missing = ["finetune", "--model", str(tiny_model), "--dataset", str(tmp_path / "none"), "--out", str(tmp_path)]
    expect_error(missing, "Dataset folder not found", capsys)


def test_a_fine_tune_names_an_image_of_its_dataset_that_it_cannot_read(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dataset)
    broken = next(p for p in sorted(dataset.iterdir()) if p.is_dir()) / "notes.png"
    broken.write_text("not an image")
    argv = ["finetune", "--model", str(tiny_model), "--dataset", str(dataset), "--out", str(tmp_path / "run")]
    expect_error([*argv, "--steps", "1"], f"Cannot read image {broken}", capsys)
