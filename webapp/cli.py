"""The launch.py commands that go through the service: `app` (default), `import`, `export`, `review`,
`verify-export`."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from storage.db import DATABASE_FILE_NAME
from storage.export import SplitPlan
from webapp.auth import add_user, password_checker
from webapp.studio import StudioService, verify_export

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
        rows = service.review_queue(status, args.class_name, args.source, args.limit, batch=args.batch)
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
    if args.review_command == "batches":
        batches = service.batches(args.limit)
        if args.json:
            print(json.dumps([asdict(batch) for batch in batches], indent=2))
            return
        print(f"{'pending':>7} {'total':>6}  batch")
        for batch in batches:
            print(f"{batch.pending:>7} {batch.total:>6}  {batch.name}")
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
