"""Training and batch generation on two real CPU processes (torchrun, gloo): one set of files, shards, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def torchrun(processes: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -- launch.py ARGS` (the `--` keeps torchrun off the command's own options)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run(
        [*command, "--", "launch.py", *args],
        cwd=PROJECT_ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _finetune_args(model: Path, dataset: Path, out: Path, steps: int) -> list[str]:
    return [
        "finetune", "--model", str(model), "--dataset", str(dataset), "--out", str(out),
        "--steps", str(steps), "--batch-size", "2", "--checkpointing-steps", "2",
    ]  # fmt: skip


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_process_finetune_shards_batches_writes_one_adapter_and_resumes(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from engine.config import TrainConfig
    from engine.generation.generate import GenerationConfig, generate
    from engine.generation.pipeline import load_pipeline
    from engine.training.loop import latest_checkpoint, warmup_cosine

    run = tmp_path / "run"
    done = torchrun(2, *_finetune_args(tiny_model, tiny_dataset, run, 10))
    assert done.returncode == 0, done.stderr[:6000]
    assert done.stdout.count("completed: 10 steps") == 1, done.stdout

    entries = _log(run)
    assert [e["step"] for e in entries] == [10], "one process writes the log"
    (entry,) = entries
    assert entry["processes"] == 2 and entry["images_per_s_per_process"] > 0
    first, second = entry["batch_by_process"]
    assert len(first) == len(second) == 2 and first != second, "each process trains on its own share of the batch"
    config = TrainConfig.load(run / "config.json")
    factor = warmup_cosine(config)(10)
    expected = [rate * factor for rate in (config.ti_learning_rate, config.lora_learning_rate)]
    assert min(abs(entry["lr"] - rate) for rate in expected) < 1e-9, "one schedule step per optimizer step"
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "checkpoint-10"
    random_states = sorted(p.name for p in checkpoint.glob("random_states_*.pkl"))
    assert random_states == ["random_states_0.pkl", "random_states_1.pkl"], "every process saves its random state"
    assert not list(run.glob(".partial-*"))
    index = json.loads((run / "tokens.json").read_text())
    assert sorted(index["tokens"]) == ["inclusion", "scratches"]

    pipe = load_pipeline(tiny_model, run)
    slab = Image.fromarray(np.full((48, 48, 3), 128, np.uint8))
    (candidate,) = generate(pipe, slab, GenerationConfig("scratches", 1, 0.5, 2)).candidates
    assert candidate.image.size == (48, 48)

    # Resume the two-process run on one process and then on two again.
    one = torchrun(1, *_finetune_args(tiny_model, tiny_dataset, run, 12), "--resume")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resumed from step 10" in one.stdout
    two = torchrun(2, *_finetune_args(tiny_model, tiny_dataset, run, 14), "--resume")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("resumed from step 12") == 1
    assert latest_checkpoint(run).name == "checkpoint-14"


def test_an_interrupted_two_process_finetune_resumes_from_its_last_checkpoint(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from engine.training.loop import latest_checkpoint

    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--"]
    process = subprocess.Popen(
        [*command, "launch.py", *_finetune_args(tiny_model, tiny_dataset, run, 100_000)],
        cwd=PROJECT_ROOT,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while latest_checkpoint(run) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers and waits for them
    process.wait(timeout=120)
    interrupted_at = latest_checkpoint(run)
    assert interrupted_at is not None, "the run wrote no checkpoint before it was stopped"
    assert not (run / "tokens.json").exists()
    step = int(interrupted_at.name.split("-")[1])

    resumed = torchrun(2, *_finetune_args(tiny_model, tiny_dataset, run, step + 2), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout
    assert (run / "tokens.json").exists()


def test_two_process_generation_writes_the_same_images_as_one(
    tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    common = [
        "generate", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--token", "scratches",
        "--init", str(tiny_dataset / "scratches"), "--num", "5", "--steps", "2", "--strength", "0.5",
        "--realism-threshold", "off",
    ]  # fmt: skip
    single = torchrun(1, *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun(2, *common, "--out", str(tmp_path / "two"))
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("Wrote 5 images") == 1

    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"scratches_{i:05d}.png" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        one = Image.open(tmp_path / "one" / name)
        two = Image.open(tmp_path / "two" / name)
        assert one.info == two.info, "same seed, init and parameters"
        difference = np.abs(np.asarray(one, np.int16) - np.asarray(two, np.int16))
        assert difference.max() <= 2, name


def test_two_processes_step_the_gated_strength_down_as_one_does(
    tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Every candidate flagged: both make the same candidates at 0.4, 0.3 and 0.2 and end the batch alike. The init
    whose first candidate uses up a strength's flags drops its second one; later inits that the second process made
    at the old strength are made again at the new one."""
    from engine.generation.generate import read_png_parameters

    common = [
        "generate", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--token", "scratches",
        "--init", str(tiny_dataset / "scratches"), "--num", "3", "--steps", "10", "--strength", "0.4",
        "--realism-threshold", "1", "--capture-variation", "0",
    ]  # fmt: skip
    flagged = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        run = torchrun(processes, *common, "--out", str(out))
        assert run.returncode != 0 and "for 0 kept (strength 0.40, 0.30, 0.20)" in run.stderr, run.stderr[-3000:]
        flagged[processes] = {p.name: p for p in sorted((out / "flagged").iterdir())}
    assert list(flagged[1]) == list(flagged[2]) == [f"scratches_flagged_{i:05d}.png" for i in range(9)]
    strengths = [read_png_parameters(path.read_bytes()).strength for path in flagged[1].values()]
    assert strengths == [0.4] * 3 + [0.3] * 3 + [0.2] * 3
    for name, path in flagged[1].items():
        one, two = Image.open(path), Image.open(flagged[2][name])
        assert one.info == two.info, name
        assert np.abs(np.asarray(one, np.int16) - np.asarray(two, np.int16)).max() <= 2, name


def test_two_process_generation_into_the_studio_stores_every_sample_once(
    tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from webapp.studio import StudioService

    data = tmp_path / "data"
    args = [
        "generate", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--token", "inclusion",
        "--init", str(tiny_dataset / "inclusion"), "--num", "5", "--steps", "3", "--realism-threshold", "off",
        "--data-dir", str(data),
    ]  # fmt: skip
    done = torchrun(2, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Stored 5 pending samples (ids 1-5)") == 1
    again = torchrun(2, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 identical to stored samples skipped" in again.stdout

    service = StudioService(data, str(tiny_model))
    try:
        queue = service.review_queue("pending")
        assert [row.id for row in queue] == [1, 2, 3, 4, 5]
        assert len({service.sample_details(row.id).path.read_bytes() for row in queue}) == 5
        assert len(service.list_sources(role="defect", class_name="inclusion")) == 4
    finally:
        service.close()
