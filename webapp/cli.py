"""The launch.py commands that go through the service: `app` (default), `import`, `export`, `review`,
`verify-export`."""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import logging
import secrets
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from storage.db import DATABASE_FILE_NAME
from storage.export import SplitPlan
from webapp.service import StudioService, verify_export

logger = logging.getLogger(__name__)

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
    if command == "add-user":
        return add_user_command(args.users_file, args.user, args.password_stdin)
    if command == "app":
        return run_app(args)
    if (
        command in ("export", "review")
        and args.database_url is None
        and not (args.data_dir / DATABASE_FILE_NAME).exists()
    ):
        raise FileNotFoundError(f"No studio in {args.data_dir} (no {DATABASE_FILE_NAME}); pass the app's --data-dir.")
    service = StudioService(args.data_dir, args.model, args.database_url)
    try:
        if command == "import":
            result = service.import_folder(args.images, args.role, args.class_name, args.annotations, cli_user())
            print(result.summary)
        elif command == "export":
            chosen = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.split_seed}
            split = SplitPlan(**{name: value for name, value in chosen.items() if value is not None})
            export = service.export_dataset(cli_user(), args.out, args.formats, classes=args.classes, split=split)
            counts = ", ".join(f"{split} {n}" for split, n in export.split_counts.items())
            print(f"Wrote {export.n_items} images ({counts}) to {export.path} (sha256 {export.sha256})")
        elif command == "review":
            review_command(service, args)
        else:
            raise ValueError(f"Unknown command {command!r}.")
    finally:
        service.close()
    return 0


def review_command(service: StudioService, args: argparse.Namespace) -> None:
    """`launch.py review list|accept|reject|undo`: the review queue for scripts and overnight batches."""
    if args.review_command == "list":
        status = None if args.status == "all" else args.status
        rows = service.review_queue(status, args.class_name, args.source, args.limit)
        if args.json:
            print(json.dumps([asdict(row) for row in rows], indent=2))
            return
        print(f"{'id':>6}  {'class':<20} {'status':<9} {'realism':>7}  {'source':>6}  seed  made by")
        for row in rows:
            realism = f"{row.realism_score:.2f}" if row.realism_score is not None else "-"
            print(
                f"{row.id:>6}  {row.class_name:<20} {row.status:<9} {realism:>7}  {row.source_image_id:>6}  "
                f"{row.seed:<4}  {row.created_by}"
            )
        print(f"{len(rows)} sample(s)")
        return
    user = cli_user()
    failed = 0
    for sample_id in args.ids:
        if args.review_command == "undo":
            result = service.undo(sample_id, user)
        else:
            status = "accepted" if args.review_command == "accept" else "rejected"
            result = service.decide(sample_id, status, getattr(args, "reason", None), user)
        failed += not result.applied
        print(f"{sample_id}: {result.status} ({result.message})" if result.message else f"{sample_id}: {result.status}")
    if failed:
        raise ValueError(f"{failed} of {len(args.ids)} decision(s) were not applied.")


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


def add_user_command(users_file: Path, user: str, from_stdin: bool) -> int:
    """`launch.py add-user`: the password from a prompt (typed twice) or one line of standard input."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {user}: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("The passwords differ; nothing was written.")
    add_user(users_file, user, password)
    print(f"Saved {user} in {users_file}")
    return 0


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
    """Gradio's auth callable from `--auth`: a users file (see `read_users_file`), or "user:password,..."."""
    path = Path(auth).expanduser()
    hashes = read_users_file(path) if path.is_file() else parse_auth_pairs(auth)

    def check(username: str, password: str) -> bool:
        stored = hashes.get(username)
        return stored is not None and verify_password(password, stored)

    return check


# scrypt (RFC 7914) with a random salt per password; n = 2**14 costs ~50 ms and 16 MiB per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_PREFIX = "scrypt"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash` (base64) of a password, with a fresh random salt unless one is given."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encoded = (base64.b64encode(part).decode() for part in (salt, digest))
    return "$".join([SCRYPT_PREFIX, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded])


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a stored scrypt hash (or a legacy unsalted sha256 hex digest)."""
    if not stored.startswith(SCRYPT_PREFIX + "$"):
        return hmac.compare_digest(hashlib.sha256(password.encode()).hexdigest(), stored)
    _, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    computed = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(computed, expected)


def parse_auth_pairs(auth: str) -> dict[str, str]:
    """User -> password hash from "user:password[,user:password]" (passwords may not contain commas)."""
    hashes = {}
    for pair in auth.split(","):
        user, separator, password = pair.partition(":")
        if not separator or not user.strip() or not password:
            raise ValueError("--auth must be user:password[,user:password] or the path of a users file.")
        hashes[user.strip()] = password_hash(password)
    return hashes


def _valid_stored_hash(stored: str) -> bool:
    if stored.startswith(SCRYPT_PREFIX + "$"):
        parts = stored.split("$")
        try:
            return (
                len(parts) == 6
                and all(int(v) > 0 for v in parts[1:4])
                and all(base64.b64decode(v, validate=True) for v in parts[4:])
            )
        except ValueError:
            return False
    return len(stored) == 64 and all(c in "0123456789abcdef" for c in stored)


def read_users_file(path: Path) -> dict[str, str]:
    """User -> stored hash from lines `user:scrypt$…` written by `launch.py add-user`.

    Lines `user:<sha256 hex>` of earlier versions still work but are unsalted; a warning names them.
    '#' comments and blank lines are skipped.
    """
    hashes = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, stored = line.partition(":")
        stored = stored.strip()
        if not user.strip() or not _valid_stored_hash(stored):
            raise ValueError(f"Line {number} of {path} is not `user:<hash from launch.py add-user>`.")
        hashes[user.strip()] = stored
    if not hashes:
        raise ValueError(f"{path} lists no users.")
    legacy = sorted(user for user, stored in hashes.items() if not stored.startswith(SCRYPT_PREFIX + "$"))
    if legacy:
        logger.warning(
            "Unsalted sha256 passwords in %s for %s; re-add them with `launch.py add-user`.", path, ", ".join(legacy)
        )
    return hashes


def add_user(path: Path, user: str, password: str) -> None:
    """Add or replace a user's line in a users file (created if missing) with a salted scrypt hash."""
    user = user.strip()
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ValueError(f"A user name must be non-empty, without ':' or spaces, got {user!r}.")
    if len(password) < 8:
        raise ValueError("A password must be at least 8 characters long.")
    path = Path(path)
    lines = path.read_text().splitlines() if path.is_file() else ["# Steel Defect Studio users (launch.py add-user)"]
    kept = [line for line in lines if line.strip().partition(":")[0].strip() != user or line.strip().startswith("#")]
    kept.append(f"{user}:{password_hash(password)}")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(kept) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)
