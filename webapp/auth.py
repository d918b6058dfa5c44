"""Sign-in for the web app: the users file, salted scrypt password hashes and Gradio's auth callable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


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
