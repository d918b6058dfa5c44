"""The launch.py commands that go through the service: `app` (default), `import`, `export`, `verify-export`."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webapp.service import StudioService, verify_export

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Handlers that do not touch the model (uploads, reviews, tables) may run side by side; model handlers run
# one at a time (concurrency_id "model" in webapp.app).
DEFAULT_CONCURRENCY = 4
# Requests waiting beyond this are refused with "queue is full" instead of piling up in memory: 64 waiting
# generations of ~20 s each on a CPU is already a 20-minute wait.
QUEUE_MAX_SIZE = 64


def run_service_command(args: argparse.Namespace) -> int:
    """Run one service command; returns the exit code. User errors raise ValueError/FileNotFoundError."""
    command = args.command or "app"
    if command == "verify-export":
        return verify_export_command(args.zip)
    if command == "app":
        return run_app(args)
    service = StudioService(args.data_dir, args.model, args.database_url)
    try:
        if command == "import":
            result = service.import_folder(args.images, args.role, args.class_name, args.annotations, cli_user())
            print(result.summary)
        elif command == "export":
            export = service.export_dataset(cli_user(), args.out, args.formats)
            print(f"Wrote {export.n_items} images to {export.path} (sha256 {export.sha256})")
        else:
            raise ValueError(f"Unknown command {command!r}.")
    finally:
        service.close()
    return 0


def run_app(args: argparse.Namespace) -> int:
    """Build the service and the UI and serve it until interrupted."""
    from webapp.app import build_app, served_folders

    check_host(args.host, bool(args.auth), args.allow_unauthenticated_remote)
    auth = password_checker(args.auth) if args.auth else None
    service = StudioService(args.data_dir, args.model, args.database_url)
    try:
        print(f"Model: {service.model_ref}")  # a wrong --model is reported now, not at the first generation
        service.fail_interrupted_runs()
        app = queue_app(build_app(service))
        app.launch(
            server_name=args.host,
            server_port=args.port,
            auth=auth,
            auth_message="Steel Defect Studio: sign in with your studio account." if auth else None,
            allowed_paths=served_folders(service),
        )
    finally:
        service.close()
    return 0


def queue_app(app: Any) -> Any:
    """Turn on the app's bounded request queue (the gr.Blocks is returned for chaining)."""
    return app.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)


def verify_export_command(zip_path: Path) -> int:
    """Print whether an export zip matches its manifest; exit code 1 if it does not."""
    problems = verify_export(zip_path)
    if not problems:
        print(f"OK: {zip_path} matches its manifest.")
        return 0
    print(f"{len(problems)} problem(s) in {zip_path}:")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def cli_user() -> str:
    """The operating-system user, stamped on what CLI commands change."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def check_host(host: str, has_auth: bool, allow_unauthenticated_remote: bool) -> None:
    """Refuse to serve beyond this machine without a login, unless explicitly allowed."""
    if host not in LOOPBACK_HOSTS and not has_auth and not allow_unauthenticated_remote:
        raise ValueError(
            f"Refusing to serve on {host} without --auth; add --auth, or --allow-unauthenticated-remote "
            "if the network is trusted."
        )


def password_checker(auth: str) -> Callable[[str, str], bool]:
    """Gradio's auth callable from `--auth`: a users file of `user:sha256hex` lines, or "user:password,..."."""
    path = Path(auth).expanduser()
    hashes = read_users_file(path) if path.is_file() else parse_auth_pairs(auth)

    def check(username: str, password: str) -> bool:
        expected = hashes.get(username)
        return expected is not None and hmac.compare_digest(password_hash(password), expected)

    return check


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def parse_auth_pairs(auth: str) -> dict[str, str]:
    """User -> password hash from "user:password[,user:password]" (passwords may not contain commas)."""
    hashes = {}
    for pair in auth.split(","):
        user, separator, password = pair.partition(":")
        if not separator or not user.strip() or not password:
            raise ValueError("--auth must be user:password[,user:password] or the path of a users file.")
        hashes[user.strip()] = password_hash(password)
    return hashes


def read_users_file(path: Path) -> dict[str, str]:
    """User -> password hash from lines `user:sha256hex-of-password` ('#' comments and blank lines skipped)."""
    hashes = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, digest = line.partition(":")
        digest = digest.strip().lower()
        if not user.strip() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"Line {number} of {path} is not `user:sha256hex-of-password`.")
        hashes[user.strip()] = digest
    if not hashes:
        raise ValueError(f"{path} lists no users.")
    return hashes
