"""Benchmarks of the studio on this machine: preview (a whole window, and auto-place at the token's masked strength,
the app's default on a clean slab), a preview asked for while a batch runs (the studio's model lock), fine-tune, app
start; wall time and peak memory.

    python bench/bench_studio.py [--model M] [--adapter RUN] [--finetune-data DIR] [--skip-finetune] [--slab 800x200]

Each case runs in its own subprocess (`--case NAME ARGS`, printing its figures as JSON) so that peak memory
(ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BATCH_SAMPLES = 24


def noise_slab(width: int, height: int, seed: int) -> Image.Image:
    """A grey slab of steel-like pixel noise, the benches' stand-in for a clean slab."""
    pixels = np.random.default_rng(seed).normal(128, 14, (height, width)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image) -> bytes:
    """An image as the bytes of a PNG file, as an upload carries it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def peak_mb() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preview_case(model: str, adapter: str, slab_size: str) -> dict:
    """Pipeline load, then five previews of 4 candidates after a warm-up, a whole window and auto-placed."""
    from engine.batch import default_strength
    from engine.config import DEFAULT_STEPS, GenerationConfig
    from engine.generation.generate import generate
    from engine.generation.pipeline import load_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(model or None, adapter=adapter or None)
    load_s = time.perf_counter() - t0
    slab = noise_slab(*(int(side) for side in slab_size.split("x")), seed=0)
    name = sorted(pipe.tokens)[0]

    def timed(config: GenerationConfig) -> list[float]:
        generate(pipe, slab, config)
        times = []
        for seed in range(5):
            config.seed = seed
            t = time.perf_counter()
            generate(pipe, slab, config)
            times.append(time.perf_counter() - t)
        return times

    window = GenerationConfig(class_name=name, num_candidates=4, steps=DEFAULT_STEPS)
    masked_strength = default_strength(pipe, name, masked=True)
    masked = GenerationConfig(name, 4, masked_strength, steps=DEFAULT_STEPS, auto_place=True)
    window_times, auto_times = timed(window), timed(masked)
    return {
        "load_s": load_s,
        "strength": window.strength,
        "preview4_s": min(window_times),
        "preview4_median_s": statistics.median(window_times),
        "auto_place_strength": masked.strength,
        "auto_place4_s": min(auto_times),
        "auto_place4_median_s": statistics.median(auto_times),
        "peak_mb": peak_mb(),
    }


def preview_during_batch_case() -> dict:
    """A preview alone, then one asked for once a batch of the first tuned class has started (the model lock)."""
    from engine.config import GenerationConfig
    from webapp.studio import StudioService

    with tempfile.TemporaryDirectory() as data_dir:
        service = StudioService(data_dir)
        name = sorted(info.name for info in service.list_classes() if info.adapter_path)[0]
        reals = [(f"real {i}.png", png_bytes(noise_slab(200, 200, i))) for i in range(5)]
        service.upload_images(reals, "defect", name, "bench")
        slab = service.upload_images([("slab.png", png_bytes(noise_slab(200, 200, 99)))], "clean", None, "bench")
        slab_id = slab.sources[0].id

        def preview(seed: int) -> float:
            t = time.perf_counter()
            service.generate_candidates(slab_id, GenerationConfig(name, 4, 0.4, seed=seed), "bench")
            return time.perf_counter() - t

        preview(0)
        alone = preview(1)
        started, took = threading.Event(), {}

        def batch() -> None:
            t = time.perf_counter()
            service.generate_batch(name, BATCH_SAMPLES, 0, "bench", lambda *_: started.set(), realism_threshold=None)
            took["batch"] = time.perf_counter() - t

        worker = threading.Thread(target=batch)
        worker.start()
        started.wait()
        during = preview(2)
        worker.join()
        service.close()
    return {"alone_s": alone, "during_s": during, "batch_s": took["batch"], "class": name}


def finetune_case(model: str, data: str, out: str) -> dict:
    """The CPU quick preset's fine-tune on a folder: its total time, a step's time after ten, peak memory."""
    from engine.batch import finetune_folder

    steps: list[float] = []
    t0 = time.perf_counter()
    result = finetune_folder(
        data, out, model=model or None, preset="cpu-quick", progress=lambda *_: steps.append(time.perf_counter())
    )
    total = time.perf_counter() - t0
    step_s = (steps[-1] - steps[9]) / (len(steps) - 10) if len(steps) > 10 else float("nan")
    return {"finetune_total_s": total, "steps": result.steps, "step_s": step_s, "peak_mb": peak_mb()}


CASES: dict[str, Callable[..., dict]] = {
    "preview": preview_case,
    "preview-during-batch": preview_during_batch_case,
    "finetune": finetune_case,
}


def run_case(name: str, *args: str) -> dict:
    """One case in a subprocess of its own, so that its peak memory is its own."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_studio", "--case", name, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def app_start(model: str) -> dict:
    """Seconds from `python launch.py` to the first page answering, and the server's peak memory."""
    import urllib.request

    with tempfile.TemporaryDirectory() as data_dir:
        port = "7931"
        command = [sys.executable, "launch.py", "--data-dir", data_dir, "--port", port]
        if model:
            command += ["--model", model]
        t0 = time.perf_counter()
        server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - t0 < 120:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.2)
            first_page = time.perf_counter() - t0
            status = Path(f"/proc/{server.pid}/status").read_text()
            peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            server.terminate()
            server.wait(10)
    return {"app_first_page_s": first_page, "peak_mb": peak / 1024}


def main() -> None:
    if sys.argv[1:2] == ["--case"]:
        from engine.quiet import quiet_libraries

        quiet_libraries()
        print(json.dumps(CASES[sys.argv[2]](*sys.argv[3:])))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="")
    parser.add_argument("--adapter", default="", help="Run folder for the preview's tokens (default: the model's own).")
    parser.add_argument("--finetune-data", type=Path, default=None, help="ImageFolder with one class of ~20 images.")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--slab", default="200x200", help="The preview slab's WIDTHxHEIGHT (a strip: 800x200).")
    args = parser.parse_args()
    rows = []
    preview = run_case("preview", args.model, args.adapter, args.slab)
    rows.append(("pipeline load", f"{preview['load_s']:.2f} s", ""))
    rows.append(
        (
            f"preview, 4 candidates, 20 steps x {preview['strength']}, {args.slab} slab",
            f"{preview['preview4_s']:.2f} s (median {preview['preview4_median_s']:.2f})",
            f"{preview['peak_mb']:.0f} MB",
        )
    )
    rows.append(
        (
            f"preview, 4 candidates, auto-place, 20 steps x {preview['auto_place_strength']}, {args.slab} slab",
            f"{preview['auto_place4_s']:.2f} s (median {preview['auto_place4_median_s']:.2f})",
            "",
        )
    )
    during = run_case("preview-during-batch")
    rows.append(
        (
            f"preview during a {BATCH_SAMPLES}-sample batch ({during['class']})",
            f"{during['during_s']:.2f} s (alone {during['alone_s']:.2f}; batch {during['batch_s']:.1f} s)",
            "",
        )
    )
    if not args.skip_finetune and args.finetune_data:
        with tempfile.TemporaryDirectory() as out:
            ft = run_case("finetune", args.model, str(args.finetune_data), str(Path(out) / "run"))
        rows.append(("fine-tune step (cpu-quick batch)", f"{ft['step_s']:.2f} s", ""))
        rows.append(
            (f"fine-tune cpu-quick ({ft['steps']} steps)", f"{ft['finetune_total_s']:.0f} s", f"{ft['peak_mb']:.0f} MB")
        )
    start = app_start(args.model)
    rows.append(("app start to first page", f"{start['app_first_page_s']:.1f} s", f"{start['peak_mb']:.0f} MB"))
    print(f"Steel Defect Studio benchmarks — {os.cpu_count()} CPU cores, torch threads default")
    print(f"{'case':45} {'time':28} {'peak memory':>12}")
    for name, value, memory in rows:
        print(f"{name:45} {value:28} {memory:>12}")


if __name__ == "__main__":
    main()
