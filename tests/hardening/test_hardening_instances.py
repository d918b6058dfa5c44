"""Two studio app processes on one database and data directory, two reviewers deciding the same samples.

The database is STUDIO_TEST_DATABASE_URL when set (CI's PostgreSQL on loopback, `.ci/storage-on-postgres`),
else a SQLite file in the shared data directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import launch
from storage.db import Database
from storage.repository import list_decisions, list_samples
from tests.support import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = 6
USERS = {"alice": "alice-password", "bob": "bob-password"}


def _start_app(data_dir: Path, url: str, model: Path, port: int) -> subprocess.Popen:
    auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
    command = [sys.executable, "launch.py", "app", "--data-dir", str(data_dir), "--database-url", url]
    return subprocess.Popen(
        [*command, "--model", str(model), "--port", str(port), "--auth", auth],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_until_serving(port: int, process: subprocess.Popen, timeout_s: float = 180) -> str:
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"The app exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return url
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"The app on port {port} did not start in {timeout_s} s.")


def _empty_postgres(url: str) -> None:
    from sqlalchemy import text

    from storage.tables import Base

    database = Database(url)
    with database.engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    database.dispose()


def test_two_app_instances_on_one_database_lose_no_decision_and_log_every_attempt(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path
) -> None:
    from gradio_client import Client

    data_dir = tmp_path / "shared-data"
    url = os.environ.get("STUDIO_TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'studio.db'}"
    if not url.startswith("sqlite"):
        _empty_postgres(url)
    generate = [
        "generate", "--data-dir", str(data_dir), "--database-url", url, "--model", str(tiny_model),
        "--adapter", str(tiny_adapter), "--token", "scratches", "--init", str(tiny_dataset / "scratches"),
        "--num", str(SAMPLES), "--steps", "3", "--realism-threshold", "off",
    ]  # fmt: skip
    assert launch.main(generate) == 0

    ports = [free_port(), free_port()]
    apps = [_start_app(data_dir, url, tiny_model, port) for port in ports]
    try:
        urls = [_wait_until_serving(port, app) for port, app in zip(ports, apps, strict=True)]
        clients = {
            "alice": Client(urls[0], auth=("alice", USERS["alice"]), verbose=False),
            "bob": Client(urls[1], auth=("bob", USERS["bob"]), verbose=False),
        }
        ids = list(range(1, SAMPLES + 1))
        plans = {"alice": ("/review_accept", ids), "bob": ("/review_reject", ids[::-1])}
        barrier = threading.Barrier(len(plans))
        errors: list[BaseException] = []

        def review(user: str) -> None:
            endpoint, order = plans[user]
            try:
                barrier.wait(timeout=60)
                for sample_id in order:
                    clients[user].predict(sample_id, f"{user} decided", "All", "All", api_name=endpoint)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=review, args=(user,)) for user in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors

        # Each instance reads the other's decisions without a reload.
        _, _, _, rows = clients["alice"].predict("All", "All", "All", api_name="/dataset_view")
        shown = {row[0]: row[2] for row in rows["data"]}
        for client in clients.values():
            client.close()
    finally:
        for app in apps:
            app.terminate()
            app.wait(timeout=60)

    database = Database(url)
    try:
        with database.session() as s:
            samples = {sample.id: sample for sample in list_samples(s, limit=100)}
            assert sorted(samples) == ids
            for sample_id, sample in samples.items():
                history = list_decisions(s, sample_id)
                assert sorted((d.user, d.status) for d in history) == [("alice", "accepted"), ("bob", "rejected")]
                assert {d.outcome for d in history} == {"applied"}, "the UI decides on the latest state"
                assert sample.revision == 2 and sample.status == history[-1].status
                assert sample.decided_by == history[-1].user
                assert shown[sample_id] == sample.status
    finally:
        database.dispose()
