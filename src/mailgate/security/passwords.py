"""SMTP AUTH credentials: scrypt password hashes in an owner-only file.

Format: one `user:scrypt$N$r$p$SALT$HASH` line per user (base64 salt and hash).
scrypt (hashlib, backed by OpenSSL) is memory-hard; verifying takes tens of
milliseconds, so a successful check is remembered (keyed by a SHA-256 of the
pair, in memory only) to spare regular clients the cost. Plain-text passwords
are never stored, logged or put in events. The file is re-read when it changes,
so `mailgate passwd` takes effect without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

N, R, P = 2**14, 8, 1
_USER = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
_REMEMBER = 1024


class CredentialsError(ValueError):
    """A bad user name, or a credentials file that cannot be used (the text says why)."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected), maxmem=256 * 1024 * 1024,
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise CredentialsError(
            f"user name {user!r} may hold only letters, digits and . _ @ + - (1-128 characters)"
        )
    return user


class Credentials:
    """The credentials file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._remembered: dict[bytes, str] = {}

    def users(self) -> dict[str, str]:
        """user -> hash, re-read when the file changed; a missing file means no users."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp == self._stamp:
                return dict(self._users)
        users = _parse(self.path.read_text())  # outside the lock: never held across I/O
        with self._lock:
            if stamp != self._stamp:
                self._users, self._stamp = users, stamp
                self._remembered.clear()
            return dict(users)

    def verify(self, user: str, password: str) -> bool:
        encoded = self.users().get(user)
        if encoded is None:
            verify_password(password, hash_password("x"))  # same cost: no user enumeration
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        with self._lock:
            if self._remembered.get(key) == encoded:
                return True
        if not verify_password(password, encoded):
            return False
        with self._lock:
            if len(self._remembered) >= _REMEMBER:
                self._remembered.clear()
            self._remembered[key] = encoded
        return True

    def set(self, user: str, password: str) -> bool:
        """Add or replace a user; True if it was new. The file is rewritten atomically, 0600."""
        check_user(user)
        if not password:
            raise CredentialsError("empty password")
        users = self.users()
        new = user not in users
        users[user] = hash_password(password)
        self._write(users)
        return new

    def remove(self, user: str) -> bool:
        users = self.users()
        if users.pop(user, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{u}:{h}\n" for u, h in sorted(users.items()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _parse(text: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not _USER.fullmatch(user) or not encoded.startswith("scrypt$"):
            raise CredentialsError(f"line {number}: expected user:scrypt$... (plain text refused)")
        users[user] = encoded
    return users
