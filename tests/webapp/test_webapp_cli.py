"""launch.py's service commands: import, export, verify-export, and the app's host and login checks."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

import launch
from webapp.auth import add_user, password_checker
from webapp.cli import check_host, run_service_command


def run(argv: list[str]) -> int:
    return run_service_command(launch.build_parser().parse_args(argv))


def test_import_export_and_verify_from_the_command_line(tmp_path: Path, tiny_dataset: Path, tiny_model: Path, capsys):
    common = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)]
    assert run(["import", *common, "--images", str(tiny_dataset), "--role", "defect"]) == 0
    assert "Stored 8 image(s)" in capsys.readouterr().out

    out = tmp_path / "export.zip"
    assert run(["export", *common, "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        images = [name for name in archive.namelist() if name.startswith("images/")]
    assert len(images) == 8

    assert run(["verify-export", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(out) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"changed" if name == images[0] else source.read(name))
    assert run(["verify-export", str(damaged)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out


def test_user_errors_exit_2_through_launch(tmp_path: Path, capsys) -> None:
    assert launch.main(["verify-export", str(tmp_path / "missing.zip")]) == 2
    assert "Export zip not found" in capsys.readouterr().err
    assert launch.main(["--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "without --auth" in capsys.readouterr().err


def test_remote_hosts_need_a_login_or_an_explicit_opt_out() -> None:
    check_host("127.0.0.1", has_auth=False, allow_unauthenticated_remote=False)
    check_host("0.0.0.0", has_auth=True, allow_unauthenticated_remote=False)
    check_host("0.0.0.0", has_auth=False, allow_unauthenticated_remote=True)
    with pytest.raises(ValueError, match="Refusing to serve on 0.0.0.0"):
        check_host("0.0.0.0", has_auth=False, allow_unauthenticated_remote=False)


def test_inline_passwords_and_a_users_file_of_hashes(tmp_path: Path) -> None:
    inline = password_checker("alice:s3cret,bob:pa:ss")
    assert inline("alice", "s3cret") and inline("bob", "pa:ss")
    assert not inline("alice", "wrong") and not inline("carol", "s3cret")

    # Files of earlier versions (unsalted sha256) still sign in.
    users = tmp_path / "users.txt"
    users.write_text(f"# studio users\n\nalice:{hashlib.sha256(b'hunter2').hexdigest()}\n")
    from_file = password_checker(str(users))
    assert from_file("alice", "hunter2") and not from_file("alice", "hunter3")

    users.write_text("alice:not-a-hash\n")
    with pytest.raises(ValueError, match="Line 1 of .* is not `user:<hash from launch.py add-user>`"):
        password_checker(str(users))
    with pytest.raises(ValueError, match="--auth must be"):
        password_checker("alice")


def test_add_user_stores_salted_scrypt_hashes_and_replaces_a_user(tmp_path: Path, monkeypatch, capsys) -> None:
    users = tmp_path / "users.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert run(["add-user", str(users), "alice", "--password-stdin"]) == 0
    assert "Saved alice" in capsys.readouterr().out
    add_user(users, "bob", "correct horse")
    lines = [line for line in users.read_text().splitlines() if not line.startswith("#")]
    hashes = dict(line.split(":", 1) for line in lines)
    # The same password gets a different hash per user: each has its own salt; the file is private.
    assert hashes["alice"].startswith("scrypt$") and hashes["alice"] != hashes["bob"]
    assert "correct horse" not in users.read_text() and users.stat().st_mode & 0o077 == 0
    check = password_checker(str(users))
    assert check("alice", "correct horse") and check("bob", "correct horse") and not check("alice", "correct hors")

    add_user(users, "alice", "battery staple")
    assert len([line for line in users.read_text().splitlines() if line.startswith("alice:")]) == 1
    check = password_checker(str(users))
    assert check("alice", "battery staple") and not check("alice", "correct horse")
    for name, password, message in (("al ice", "long enough", "user name"), ("carol", "short", "8 characters")):
        with pytest.raises(ValueError, match=message):
            add_user(users, name, password)


def test_a_damaged_database_is_refused_in_one_line(tmp_path: Path, tiny_model: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "studio.db").write_bytes(b"this is not an SQLite file" * 200)
    assert launch.main(["export", "--data-dir", str(data), "--model", str(tiny_model), "--out", "x.zip"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith(f"error: Cannot open the studio database sqlite:///{(data / 'studio.db').resolve()}")
    assert (data / "studio.db").read_bytes().startswith(b"this is not"), "the damaged file is left as it was"
