"""Access: login with --auth, loopback-only without it, user names on every change, a bounded model queue."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError
from hardening_support import free_port

import launch
from storage.export import unsafe_path_problem, verify_export
from webapp import cli
from webapp.app import build_app, served_folders
from webapp.auth import add_user, password_checker
from webapp.cli import queue_app
from webapp.studio import StudioService

MODEL_HANDLERS = {"generate", "generate_batch", "finetune_start", "finetune_resume"}


def users_file(folder: Path) -> Path:
    """A users file made by `add-user` for alice (s3cret-pw) and bob (hunter2-pw)."""
    path = folder / "users.txt"
    for user, password in (("alice", "s3cret-pw"), ("bob", "hunter2-pw")):
        add_user(path, user, password)
    return path


def test_with_auth_only_signed_in_users_get_in_and_their_names_are_stamped(
    service: StudioService, slab_png, tmp_path: Path
) -> None:
    slab = tmp_path / "slab.png"
    slab.write_bytes(slab_png(48, 40, 3))
    app = queue_app(build_app(service))
    clients: list[Client] = []
    try:
        _, url, _ = app.launch(
            prevent_thread_lock=True,
            server_port=free_port(),
            auth=password_checker(str(users_file(tmp_path))),
            allowed_paths=served_folders(service),
            quiet=True,
        )
        # 1. Nobody gets the API without signing in
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "config", timeout=30)
        assert refused.value.code == 401
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("alice", "hunter2-pw"), verbose=False)

        # 2. Signed-in users: every upload, generation, decision and export carries their name
        alice = Client(url, auth=("alice", "s3cret-pw"), verbose=False)
        bob = Client(url, auth=("bob", "hunter2-pw"), verbose=False)
        clients += [alice, bob]
        alice.predict([handle_file(str(slab))], "clean", None, api_name="/upload")
        (source,) = service.list_sources(role="clean")
        assert source.uploaded_by == "alice"
        for seed, client in enumerate(clients):
            client.predict(None, None, api_name="/generate_refresh")
            client.submit(source.id, "scratches", 1.0, 1, 2, seed, api_name="/generate").result(timeout=180)
        first, second = sorted(row.id for row in service.dataset_view().rows)
        alice.predict(first, "", api_name="/accept")
        bob.predict(second, "too faint", api_name="/reject")
        rows = {row.id: (row.created_by, row.decided_by) for row in service.dataset_view().rows}
        assert rows == {first: ("alice", "alice"), second: ("bob", "bob")}
        assert [d["user"] for d in service.sample_details(second).decisions] == ["bob"]

        # 3. The export: only safe relative paths, and who exported it
        _, download = bob.predict(api_name="/export")
        with zipfile.ZipFile(download) as archive:
            names = archive.namelist()
            manifest = json.loads(archive.read("manifest.json"))
        assert names and all(unsafe_path_problem(name) is None for name in names)
        assert not any(name.startswith("/") or ".." in name.split("/") or "\\" in name for name in names)
        assert manifest["extra"]["exported_by"] == "bob" and verify_export(Path(download)) == []
    finally:
        for client in clients:
            client.close()
        app.close()


def test_model_handlers_share_one_slot_and_the_queue_is_bounded(
    service: StudioService, slab_png, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_id = service.upload_images([("slab.png", slab_png())], "clean", None, "alice").sources[0].id
    app = queue_app(build_app(service))
    fns = {fn.api_name: fn for fn in app.fns.values()}
    assert {name for name, fn in fns.items() if fn.concurrency_id == "model"} == MODEL_HANDLERS
    assert all(fns[name].concurrency_limit == 1 for name in MODEL_HANDLERS)
    assert app._queue.max_size == cli.QUEUE_MAX_SIZE

    # Four generations at once: the model never runs two of them side by side.
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_generate(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        raise ValueError("no model in this test")

    monkeypatch.setattr(service, "generate_candidates", slow_generate)
    client = None
    try:
        _, url, _ = app.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
        client = Client(url, verbose=False)
        client.predict(None, None, api_name="/generate_refresh")
        jobs = [client.submit(source_id, "scratches", 1.0, 1, 2, seed, api_name="/generate") for seed in range(4)]
        for job in jobs:
            assert job.result(timeout=60)[-1] == "⚠️ no model in this test"
        assert most[0] == 1
    finally:
        if client is not None:
            client.close()
        app.close()


def test_the_app_command_binds_loopback_unless_signed_in_or_explicitly_allowed(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    launched: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    common = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)]
    users = users_file(tmp_path)

    assert launch.main(common) == 0
    assert (launched[-1]["server_name"], launched[-1]["auth"]) == ("127.0.0.1", None)

    for host in ("0.0.0.0", "192.168.1.20", "::"):
        assert launch.main([*common, "--host", host]) == 2
        error = capsys.readouterr().err.strip()
        assert error == (
            f"error: Refusing to serve on {host} without --auth; add --auth, or --allow-unauthenticated-remote "
            "if the network is trusted."
        )
    assert len(launched) == 1

    assert launch.main([*common, "--host", "0.0.0.0", "--auth", str(users)]) == 0
    auth = launched[-1]["auth"]
    assert launched[-1]["server_name"] == "0.0.0.0"
    assert auth("alice", "s3cret-pw") and auth("bob", "hunter2-pw")
    assert not auth("alice", "hunter2-pw") and not auth("mallory", "s3cret-pw") and not auth("alice", "")
    assert "s3cret-pw" not in users.read_text(), "the users file holds hashes, not passwords"

    assert launch.main([*common, "--host", "0.0.0.0", "--allow-unauthenticated-remote"]) == 0
    assert launched[-1]["auth"] is None

    users.write_text("alice:s3cret\n")
    assert launch.main([*common, "--auth", str(users)]) == 2
    assert "is not `user:<hash from launch.py add-user>`" in capsys.readouterr().err
