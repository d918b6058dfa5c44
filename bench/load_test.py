"""Bounded load test: N concurrent generation requests through gradio_client against the studio on loopback.

    python bench/load_test.py --tiny                              # a tiny untrained model + 4-step adapter
    python bench/load_test.py --model M --adapter RUN --requests 32 --concurrency 16

The server runs in its own process (the app as `launch.py` serves it: bounded queue, one model slot), so its
resident memory is measured alone: after one warm-up request (model loaded), during the load (peak, sampled)
and after it. Prints latency percentiles, throughput, refusals ("queue is full") and errors. Not a unit test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A 200 px slab is one NEU tile: the size the studio generates on most.
SLAB_PX = 200
RSS_SAMPLE_S = 0.2
SERVER_START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_tiny(folder: Path) -> tuple[Path, Path]:
    """A tiny untrained SD-architecture model and a 4-step adapter for two classes, as the tests build them."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from engine.batch import finetune_folder
    from engine.prior import PriorSize, build_components

    torch.manual_seed(0)
    components = build_components(PriorSize.tiny(), folder / "tokenizer-src", seed=0)
    model = folder / "model"
    StableDiffusionImg2ImgPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(str(model))
    rng = np.random.default_rng(0)
    for name in ("scratches", "inclusion"):
        (folder / "data" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.normal(128, 12, (48, 48)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "data" / name / f"{name}_{i}.png")
    adapter = folder / "adapter"
    finetune_folder(folder / "data", adapter, model=str(model), steps=4, batch_size=4)
    return model, adapter


def serve(data_dir: str, model: str | None, adapter: str | None, port: int, threads: int, ready) -> None:
    """The server process: a studio with one clean slab, served like `launch.py` does; reports what to request."""
    import torch

    from webapp.app import build_app, served_folders
    from webapp.cli import queue_app
    from webapp.service import StudioService

    torch.set_num_threads(threads)
    service = StudioService(Path(data_dir), model=model)
    if adapter:
        service.register_adapter(Path(adapter))
    rng = np.random.default_rng(0)
    slab = rng.normal(128, 14, (SLAB_PX, SLAB_PX)).clip(0, 255).astype(np.uint8)
    from PIL import Image

    path = Path(data_dir) / "slab.png"
    Image.fromarray(slab).save(path)
    source = service.upload_images([("slab.png", path.read_bytes())], "clean", None, "bench").sources[0]
    app = queue_app(build_app(service))
    app.launch(server_port=port, prevent_thread_lock=True, allowed_paths=served_folders(service), quiet=True)
    ready.put((source.id, service.list_classes()[0].name))
    threading.Event().wait()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Diffusers folder (default: the embedded prior).")
    parser.add_argument("--adapter", default=None, help="Adapter run folder to register (default: shipped tokens).")
    parser.add_argument("--tiny", action="store_true", help="Build a tiny model and adapter in a temp folder.")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8, help="Clients sending at once.")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from gradio_client import Client

    from engine.quiet import quiet_libraries

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="studio-load-"))
    model, adapter = args.model, args.adapter
    if args.tiny:
        built_model, built_adapter = build_tiny(work / "tiny")
        model, adapter = str(built_model), str(built_adapter)

    # 1. Start the server in its own process and wait until it serves
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    port = free_port()
    server = context.Process(
        target=serve, args=(str(work / "data"), model, adapter, port, args.threads, ready), daemon=True
    )
    server.start()
    try:
        source_id, class_name = ready.get(timeout=SERVER_START_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}/"
        local = threading.local()

        def request(seed: int) -> tuple[float, str]:
            """One generation from a client of this worker thread: (latency in s, "ok" or the error's type)."""
            if not hasattr(local, "client"):
                local.client = Client(url, verbose=False)
                local.client.predict(None, None, api_name="/generate_refresh")
            started = time.perf_counter()
            try:
                local.client.predict(
                    source_id, class_name, 1.0, args.candidates, args.steps, seed, api_name="/generate"
                )
                outcome = "ok"
            except Exception as error:  # a refusal or a server error is a result to count here
                outcome = "queue full" if "queue is full" in str(error).lower() else type(error).__name__
            return time.perf_counter() - started, outcome

        # 2. Warm up (loads the pipeline), then measure memory before the load
        warm_s, warm = request(0)
        rss_before = rss_mb(server.pid)
        peak = [rss_before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(RSS_SAMPLE_S):
                peak[0] = max(peak[0], rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        # 3. The load: `requests` generations from `concurrency` clients at once
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            results = list(pool.map(request, range(1, args.requests + 1)))
        wall_s = time.perf_counter() - started
        stop.set()
        sampler.join()
        rss_after = rss_mb(server.pid)

        # 4. Report
        ok = [latency for latency, outcome in results if outcome == "ok"]
        outcomes = Counter(outcome for _, outcome in results)
        print(f"model {model or 'embedded'} · {args.candidates} candidate(s) × {args.steps} steps per request")
        print(f"warm-up: {warm_s:.2f} s ({warm})")
        print(f"{args.requests} requests from {args.concurrency} clients in {wall_s:.1f} s: {dict(outcomes)}")
        print(f"throughput {len(ok) / wall_s:.2f} req/s")
        print(
            f"latency s: p50 {percentile(ok, 50):.2f}  p90 {percentile(ok, 90):.2f}  p99 {percentile(ok, 99):.2f}"
            f"  max {max(ok, default=float('nan')):.2f}"
        )
        print(f"server RSS MB: before {rss_before:.0f}  peak {peak[0]:.0f}  after {rss_after:.0f}")
    finally:
        server.terminate()
        server.join(timeout=30)
        ready.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
