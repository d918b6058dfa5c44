"""Crash safety: a fine-tune or an export killed with SIGKILL leaves nothing that looks finished, and resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.adapters import TOKENS_FILE, read_adapter
from engine.config import PRESETS, GenerationConfig
from engine.progress import TrainingStep
from engine.training.loop import latest_checkpoint
from storage.export import ExportItem, verify_export, write_export
from storage.files import FileStore
from storage.repository import get_run
from webapp.studio import StudioService

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What accelerate's save_state writes for the two prepared models, the optimizer, the schedule and the RNGs.
CHECKPOINT_FILES = {"model.safetensors", "model_1.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
KILL_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
# The service-level run: a checkpoint every 2 steps of batch 2, so a kill lands after one long before the end.
QUICK_CHECKPOINTS = {"checkpointing_steps": 2, "train_batch_size": 2}
RUN_STEPS = 30


def child_env() -> dict[str, str]:
    """The environment of a child process: offline, one thread each (the tests share two cores)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}


def launch_command(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "launch.py"), *args]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start a child process whose output goes to `log` (a pipe nobody reads could fill and stall it)."""
    with log.open("w") as output:
        return subprocess.Popen(command, env=child_env(), cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str, log: Path) -> None:
    """SIGKILL `process` as soon as `ready()` holds; fail if it exits first or takes too long."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before {what}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {KILL_TIMEOUT_S} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_a_killed_finetune_keeps_a_complete_checkpoint_and_resume_finishes_it(
    tmp_path: Path, tiny_model: Path, tiny_dataset: Path
) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--dataset", str(tiny_dataset), "--out", str(out), "--model", str(tiny_model)]
    args += ["--steps", "40", "--batch-size", "2", "--checkpointing-steps", "4"]
    log = tmp_path / "finetune.log"
    process = start(launch_command(*args), log)
    kill_when(process, lambda: latest_checkpoint(out) is not None, "the first checkpoint", log)

    # Killed mid-run: not an adapter, and the newest checkpoint is whole (renamed into place when complete).
    assert not (out / TOKENS_FILE).exists()
    with pytest.raises(ValueError, match="not a finished adapter"):
        read_adapter(out)
    checkpoint = latest_checkpoint(out)
    step = int(checkpoint.name.split("-")[1])
    assert 4 <= step < 40 and step % 4 == 0
    assert CHECKPOINT_FILES <= {p.name for p in checkpoint.iterdir()}
    assert all((checkpoint / name).stat().st_size > 0 for name in CHECKPOINT_FILES)

    # Without --resume the folder is refused; with it, training continues from that checkpoint to the end,
    # passing over the half-written folder a kill during the next save would leave.
    (out / f".partial-checkpoint-{step + 4}").mkdir()
    (out / f".partial-checkpoint-{step + 4}" / "optimizer.bin").write_bytes(b"cut off")
    refused = subprocess.run(launch_command(*args), env=child_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = subprocess.run(
        launch_command(*args, "--resume"), env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"completed: 40 steps (resumed from step {step})" in resumed.stdout, resumed.stdout[-500:]
    assert set(read_adapter(out).tokens) == {"inclusion", "scratches"}


CHILD_RUN = f"""
import sys
import engine.config
from webapp.studio import StudioService

engine.config.PRESETS["cpu-quick"].update({QUICK_CHECKPOINTS!r})
studio = StudioService(sys.argv[1], model=sys.argv[2])
run_id = studio.start_finetune(["scratches"], "cpu-quick", {RUN_STEPS}, "alice")
studio.wait_for_run(run_id)
"""


def test_an_app_killed_mid_run_keeps_the_previous_adapter_and_the_run_resumes(
    service: StudioService, slab_png, tiny_model: Path, tiny_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.upload_images([("slab.png", slab_png(48, 40, 0))], "clean", None, "alice")
    service.upload_images([(f"s{i}.png", slab_png(32, 32, 10 + i)) for i in range(2)], "defect", "scratches", "alice")
    data_dir = service.data_dir
    service.close()

    run_dir = data_dir / "runs" / "run-0001"
    log = data_dir.parent / "app.log"
    process = start([sys.executable, "-c", textwrap.dedent(CHILD_RUN), str(data_dir), str(tiny_model)], log)
    kill_when(process, lambda: run_dir.is_dir() and latest_checkpoint(run_dir) is not None, "a checkpoint", log)

    # The next start marks the run failed; version 1 stays active and still generates.
    studio = StudioService(data_dir, model=str(tiny_model))
    studio.preview_steps = 2
    try:
        with studio.database.session() as s:
            assert get_run(s, 1).status == "running"
        studio.fail_interrupted_runs()
        failed = studio.finetune_status(1)
        assert failed.status == "failed" and "Interrupted" in failed.message
        (scratches,) = [c for c in studio.list_classes() if c.name == "scratches"]
        assert (scratches.adapter_version, scratches.adapter_path) == (1, str(tiny_adapter.resolve()))
        source_id = studio.list_sources(role="clean")[0].id
        outcome = studio.generate_candidates(source_id, GenerationConfig("scratches", 1, 1.0, 2), "bob")
        assert studio.sample_details(outcome.sample_ids[0]).params.adapter_version == 1

        # Resuming continues from the checkpoint the killed run left, to a new version.
        for key, value in QUICK_CHECKPOINTS.items():
            monkeypatch.setitem(PRESETS["cpu-quick"], key, value)
        killed_at = int(latest_checkpoint(run_dir).name.split("-")[1])
        resumed_id = studio.resume_finetune(1, "bob")
        resumed = studio.wait_for_run(resumed_id, RUN_TIMEOUT_S)
        assert (resumed.status, resumed.step, resumed.resumed_from) == ("completed", RUN_STEPS, 1), resumed.message
        assert killed_at < RUN_STEPS and (run_dir / TOKENS_FILE).is_file()
        assert {c.name: c.adapter_version for c in studio.list_classes()}["scratches"] == 2
    finally:
        studio.close()


def test_a_failed_run_leaves_the_previous_adapter_active(
    service: StudioService, slab_png, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.upload_images([(f"s{i}.png", slab_png(32, 32, 20 + i)) for i in range(2)], "defect", "scratches", "alice")

    def crash(*args, on_step=None, **kwargs):
        on_step(TrainingStep(1, 5, 0.5))
        raise RuntimeError("out of memory")

    monkeypatch.setattr("engine.batch.finetune_folder", crash)
    run_id = service.start_finetune(["scratches"], "cpu-quick", 5, "alice")
    status = service.wait_for_run(run_id, RUN_TIMEOUT_S)
    assert status.status == "failed" and status.error == "RuntimeError: out of memory"
    assert {c.name: c.adapter_version for c in service.list_classes()} == {"inclusion": 1, "scratches": 1}
    with service.database.session() as s:
        assert get_run(s, run_id).created_by == "alice"


CHILD_EXPORT = """
import sys, time
from pathlib import Path
from storage.export import ExportItem, write_export
from storage.files import FileStore

store = FileStore(Path(sys.argv[1]))
items = [ExportItem("crazing", sha, "real", source_image_id=i) for i, sha in enumerate(sys.argv[3:])]
read = FileStore.read
FileStore.read = lambda self, sha: (time.sleep(0.2), read(self, sha))[1]
write_export(Path(sys.argv[2]), items, store, {})
"""


def test_an_export_killed_midway_leaves_no_complete_looking_zip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    shas = [store.put(f"image {i}".encode() * 1000) for i in range(40)]
    out = tmp_path / "exports" / "dataset.zip"
    log = tmp_path / "export.log"
    process = start([sys.executable, "-c", textwrap.dedent(CHILD_EXPORT), str(store.root), str(out), *shas], log)

    def partly_written() -> bool:
        return out.parent.is_dir() and any(p.stat().st_size > 0 for p in out.parent.glob(".*.part"))

    kill_when(process, partly_written, "a partly written export", log)

    assert not out.exists()
    leftovers = list(out.parent.iterdir())
    assert leftovers and all(p.name.startswith(".dataset.zip.") and p.suffix == ".part" for p in leftovers)
    assert all(verify_export(p) for p in leftovers), "a partial file must never verify"


def test_verify_export_on_the_command_line_passes_a_good_zip_and_fails_a_tampered_one(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    items = [ExportItem("crazing", store.put(f"image {i}".encode()), "real", source_image_id=i) for i in range(3)]
    good = write_export(tmp_path / "good.zip", items, store, {}).path
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tampered, "w") as target:
        first_image = next(name for name in source.namelist() if name.startswith("images/"))
        for name in source.namelist():
            target.writestr(name, source.read(name) + (b"x" if name == first_image else b""))

    ok = subprocess.run(launch_command("verify-export", str(good)), env=child_env(), capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"OK: {good} matches its manifest.")
    bad = subprocess.run(
        launch_command("verify-export", str(tampered)), env=child_env(), capture_output=True, text=True
    )
    assert bad.returncode == 1 and "1 problem(s)" in bad.stdout and "sha256 mismatch: images/crazing/" in bad.stdout


def test_ctrl_c_stops_a_cli_fine_tune_at_a_checkpoint_and_the_same_command_resumes_it(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "launch.py", "finetune", "--dataset", str(tiny_dataset), "--out", str(out)]
    argv += ["--model", str(tiny_model), "--batch-size", "2", "--checkpointing-steps", "1000"]
    child = subprocess.Popen(
        [*argv, "--steps", "100000"], cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + KILL_TIMEOUT_S
    while not (out / "log.jsonl").is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=KILL_TIMEOUT_S)
    assert child.returncode == 0, stderr.decode()[-2000:]
    assert "SIGINT: stopping after this step" in stderr.decode()
    assert "\nstopped: " in stdout.decode()
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None and not (out / TOKENS_FILE).exists(), "a stop leaves a checkpoint, no adapter"
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 10 <= stopped_at < 100000

    done = subprocess.run(
        [*argv, "--steps", str(stopped_at + 3), "--resume"], cwd=PROJECT_ROOT, env=child_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"completed: {stopped_at + 3} steps (resumed from step {stopped_at})" in done.stdout.decode()
    assert sorted(read_adapter(out).tokens) == ["inclusion", "scratches"]
