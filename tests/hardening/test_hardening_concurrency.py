"""Concurrent reviewers in separate processes against the real SQLite file; the database's own safeguards."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from storage.db import DatabaseIntegrityError, open_database
from storage.files import sha256_hex
from storage.repository import add_sample, add_source_image, get_sample, list_decisions
from webapp.studio import StudioService

REVIEWERS = 4
PROCESS_TIMEOUT_S = 60
PRAGMAS = ("journal_mode", "busy_timeout", "foreign_keys")


def review(url: str, sample_id: int, user: str, status: str, barrier, results) -> None:
    """One reviewer process: its own engine, wait for the others, then decide on revision 0."""
    from storage.db import Database
    from storage.repository import decide

    database = Database(url)
    try:
        barrier.wait()
        with database.transaction() as s:
            outcome = decide(s, sample_id, status, f"{user} says {status}", user, expected_revision=0)
        results.put((user, outcome.applied, outcome.status))
    except BaseException as error:
        results.put((user, "error", repr(error)))
    finally:
        database.dispose()


def make_pending_sample(data_dir: Path) -> tuple[str, int]:
    database = open_database(data_dir)
    with database.transaction() as s:
        source = add_source_image(s, sha256_hex(b"slab"), "clean", None, "slab.png", 64, 64, [], "alice")
        sample = add_sample(
            s,
            sha256=sha256_hex(b"candidate"),
            class_name="crazing",
            source_image_id=source.id,
            model_hash="m" * 12,
            model_ref="tiny",
            token="<crazing>",
            strength=0.6,
            steps=2,
            guidance=3.0,
            seed=0,
            prompt="a steel surface with <crazing>",
            negative_prompt="",
            width=64,
            height=64,
            window_json={"x": 0, "y": 0, "size": 64},
            params_json={},
            created_by="alice",
        )
        sample_id = sample.id
    database.dispose()
    return database.url, sample_id


def test_reviewers_in_separate_processes_exactly_one_wins_and_every_attempt_is_kept(tmp_path: Path) -> None:
    url, sample_id = make_pending_sample(tmp_path)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(REVIEWERS, timeout=PROCESS_TIMEOUT_S)
    results = context.Queue()
    reviewers = [(f"reviewer{i}", "accepted" if i % 2 else "rejected") for i in range(REVIEWERS)]
    processes = [
        context.Process(target=review, args=(url, sample_id, user, status, barrier, results))
        for user, status in reviewers
    ]
    for process in processes:
        process.start()
    outcomes = {}
    for _ in processes:
        user, applied, status = results.get(timeout=PROCESS_TIMEOUT_S)
        outcomes[user] = (applied, status)
    for process in processes:
        process.join(timeout=PROCESS_TIMEOUT_S)
        assert process.exitcode == 0

    assert all(applied in (True, False) for applied, _ in outcomes.values()), outcomes
    winners = [user for user, (applied, _) in outcomes.items() if applied]
    assert len(winners) == 1, outcomes
    winner_status = dict(reviewers)[winners[0]]
    assert {status for _, status in outcomes.values()} == {winner_status}, "losers see the winner's decision"

    database = open_database(tmp_path)
    try:
        with database.session() as s:
            sample = get_sample(s, sample_id)
            history = [(d.user, d.status, d.outcome) for d in list_decisions(s, sample_id)]
        assert (sample.status, sample.decided_by, sample.revision) == (winner_status, winners[0], 1)
        assert sorted(history) == sorted(
            (user, status, "applied" if user == winners[0] else "conflict") for user, status in reviewers
        )
    finally:
        database.dispose()


def test_every_sqlite_connection_uses_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    database = open_database(tmp_path)
    try:
        with database.engine.connect() as connection:
            pragma = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in PRAGMAS}
        assert pragma["journal_mode"] == "wal" and pragma["busy_timeout"] >= 5000 and pragma["foreign_keys"] == 1
    finally:
        database.dispose()
    with sqlite3.connect(tmp_path / "studio.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "WAL is stored in the file itself"


def test_the_studio_refuses_to_start_on_a_damaged_database(tmp_path: Path, tiny_model: Path) -> None:
    StudioService(tmp_path, model=str(tiny_model)).close()
    with sqlite3.connect(tmp_path / "studio.db") as raw:
        raw.execute(
            "INSERT INTO decisions (sample_id, status, user, at, outcome) "
            "VALUES (999, 'accepted', 'mallory', '2025-01-01 00:00:00', 'applied')"
        )
    raw.close()
    with pytest.raises(DatabaseIntegrityError, match="foreign-key violation"):
        StudioService(tmp_path, model=str(tiny_model))

    garbage = tmp_path / "garbage" / "studio.db"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match="not a database"):
        StudioService(garbage.parent, model=str(tiny_model))
    assert garbage.read_bytes() == b"this is not a database" * 100, "a damaged file is never overwritten"
