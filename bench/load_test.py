"""Load test: concurrent reviewers generating, reading and deciding against the studio on loopback, for a while.

    python bench/load_test.py                                     # the embedded prior: 8 reviewers, 10 minutes
    python bench/load_test.py --tiny --duration 60                # a tiny untrained model + 4-step adapter
    python bench/load_test.py --model M --adapter RUN --reviewers 16

Each reviewer (its own gradio_client) repeats: generate `--candidates` on the slab, read the review queue's
table, take the next pending sample and accept or reject it. The server runs in its own process (the app as
`launch.py` serves it: bounded queue, one model slot), so its resident memory is measured alone, every
`--memory-every` seconds. Prints p50/p95 latency per kind of request, errors, and memory over time. Not a unit test.
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
    from engine.training.prior import PriorSize, build_components

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


def serve(
    data_dir: str, model: str | None, adapter: str | None, port: int, threads: int, ready: multiprocessing.Queue
) -> None:
    """The server process: a studio with one clean slab, served like `launch.py` does; reports what to request."""
    import torch

    from webapp.app import build_app, served_folders
    from webapp.cli import queue_app
    from webapp.studio import StudioService

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
    from engine.config import DEFAULT_STEPS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Diffusers folder (default: the embedded prior).")
    parser.add_argument("--adapter", default=None, help="Adapter run folder to register (default: shipped tokens).")
    parser.add_argument("--tiny", action="store_true", help="Build a tiny model and adapter in a temp folder.")
    parser.add_argument("--reviewers", type=int, default=8, help="Concurrent reviewers.")
    parser.add_argument("--duration", type=float, default=600, help="Seconds of load.")
    parser.add_argument("--candidates", type=int, default=2, help="Candidates per generation.")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the server.")
    parser.add_argument("--memory-every", type=float, default=30, help="Seconds between memory samples.")
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
        latencies: dict[str, list[float]] = {"generate": [], "read": [], "decide": []}
        errors: Counter = Counter()
        lock = threading.Lock()

        def timed(kind: str, client, *inputs, api_name: str) -> object:
            started = time.perf_counter()
            try:
                result = client.predict(*inputs, api_name=api_name)
            except Exception as error:  # a refusal or a server error is a result to count here
                with lock:
                    errors[f"{kind}: {type(error).__name__}: {str(error)[:80]}"] += 1
                return None
            with lock:
                latencies[kind].append(time.perf_counter() - started)
            return result

        def reviewer(index: int, deadline: float) -> None:
            client = Client(url, verbose=False)
            client.predict(None, None, api_name="/generate_refresh")
            seed = index * 100_000
            while time.time() < deadline:
                seed += args.candidates
                settings = (args.strength, args.candidates, args.steps, seed)
                timed("generate", client, source_id, class_name, *settings, api_name="/generate")
                timed("read", client, "All", "pending", api_name="/dataset_view")
                pending = timed("read", client, None, "All", api_name="/review_next")
                if pending is not None:
                    endpoint = "/review_accept" if seed % 3 else "/review_reject"
                    timed("decide", client, pending, "load test", "All", "All", api_name=endpoint)
            client.close()

        # 2. Warm up (loads the pipeline), then the load with memory samples
        warm = Client(url, verbose=False)
        warm.predict(None, None, api_name="/generate_refresh")
        warm_s = time.perf_counter()
        warm.predict(source_id, class_name, args.strength, 1, args.steps, 0, api_name="/generate")
        warm_s = time.perf_counter() - warm_s
        warm.close()
        memory = [(0.0, rss_mb(server.pid))]
        started = time.time()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(args.memory_every):
                memory.append((time.time() - started, rss_mb(server.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(max_workers=args.reviewers) as pool:
            list(pool.map(lambda i: reviewer(i, started + args.duration), range(args.reviewers)))
        wall_s = time.time() - started
        stop.set()
        sampler.join()
        memory.append((wall_s, rss_mb(server.pid)))

        # 3. Report
        print(
            f"model {model or 'embedded'} · {args.reviewers} reviewers for {wall_s:.0f} s · generation of "
            f"{args.candidates} candidate(s), {args.steps} steps, strength {args.strength} (warm-up {warm_s:.1f} s)"
        )
        print(f"{'request':<9} {'count':>6} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
        for kind, values in latencies.items():
            print(
                f"{kind:<9} {len(values):>6} {percentile(values, 50):>8.2f} {percentile(values, 95):>8.2f} "
                f"{max(values, default=float('nan')):>8.2f}"
            )
        print(f"errors: {sum(errors.values())}" + "".join(f"\n  {n} × {e}" for e, n in errors.most_common()))
        print("server RSS MB over time: " + ", ".join(f"{t:.0f} s {mb:.0f}" for t, mb in memory))
    finally:
        server.terminate()
        server.join(timeout=30)
        ready.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
