"""A private Dovecot for tests: IMAP and LMTP on loopback, configured in its own directory.

`Dovecot(root)` renders a standalone `root/dovecot.conf` (nothing from /etc/dovecot), with
base_dir, state_dir and the log below `root`, IMAP and LMTP on free 127.0.0.1 ports, LMTP
also on the Unix socket `root/run/lmtp`, and users from a passwd-file, each with its own
Maildir and, if asked, a quota that LMTP enforces at RCPT. `start()` waits (bounded) until
both ports greet and fails with Dovecot's log if they do not; `stop()` ends the master with
SIGTERM, then its whole process group with SIGKILL; the context manager stops it on every
exit. Dovecot refuses to serve mail as uid 0, so mail is served as an existing system user
(`mail`, else `nobody`) which must reach `root` and every Maildir: pytest's temporary
directories are owner-only, `reachable_dir()` makes one that is not. Loopback only,
plaintext passwords: for tests, never for a real service.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.process import free_port
from tests.support.tools import missing as unavailable
from tests.support.tools import require

MAIL_USERS = (("mail", "mail"), ("nobody", "nogroup"))  # preferred owners of served mail
START_ATTEMPTS = 3  # a free port may be taken by another test before Dovecot binds it

CONFIG = string.Template("""\
# Rendered by tests/support/dovecot.py: a private instance, standalone (no system config).
base_dir = $root/run
state_dir = $root/state
instance_name = $instance
log_path = $root/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
auth_verbose = yes
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
# The mail user is a system account (Debian's mail is uid 8); uid 0 stays refused.
first_valid_uid = 1
mail_location = maildir:~/Maildir
postmaster_address = postmaster@dovecot.test
# Refuse an over-quota recipient at RCPT, not after DATA.
lmtp_rcpt_check_quota = yes

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp_port
  }
  unix_listener lmtp {
    mode = 0666
  }
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $root/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $root/users
}
# Only users given a quota load the plugin (userdb_mail_plugins): the others' Maildirs get
# no maildirsize from Dovecot.
plugin {
  quota = maildir:User quota
}
""")


@dataclass(frozen=True, slots=True)
class MailUser:
    """The system account Dovecot serves mail as."""

    name: str
    group: str
    uid: int
    gid: int


def mail_user() -> MailUser:
    for user, group in MAIL_USERS:
        with contextlib.suppress(KeyError):
            return MailUser(user, group, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    unavailable(f"none of the users {[u for u, _ in MAIL_USERS]} exists to own served mail")


@contextlib.contextmanager
def reachable_dir(prefix: str = "mailgate-dovecot-") -> Iterator[Path]:
    """A temporary directory the mail user can traverse (pytest's are owner-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def chown_tree(path: Path, owner: MailUser) -> None:
    """Give `path` and everything below it (symlinks themselves, never followed) to `owner`."""
    for each in [path, *path.rglob("*")]:
        os.chown(each, owner.uid, owner.gid, follow_symlinks=False)


@dataclass(frozen=True, slots=True)
class User:
    address: str
    password: str
    maildir: Path
    home: Path  # Dovecot's per-user state, kept out of the Maildir
    quota: str | None  # a Dovecot size ("1K", "10M"), for quota_rule *:storage=

    def line(self, owner: MailUser) -> str:
        fields = [f"userdb_mail=maildir:{self.maildir}"]
        if self.quota is not None:
            fields += ["userdb_mail_plugins=quota", f"userdb_quota_rule=*:storage={self.quota}"]
        return (
            f"{self.address}:{{PLAIN}}{self.password}:{owner.uid}:{owner.gid}::{self.home}::"
            + " ".join(fields)
        )


class Dovecot:
    """One private Dovecot master and the directory it lives in."""

    def __init__(self, root: Path) -> None:
        if os.geteuid() != 0:
            unavailable("a private Dovecot serving mail as another user needs root")
        self.binary = require("dovecot")
        self.doveadm_binary = require("doveadm")
        require("/usr/lib/dovecot/imap")
        require("/usr/lib/dovecot/lmtp")
        self.root = root
        self.owner = mail_user()
        self.users: dict[str, User] = {}
        self.config_path = root / "dovecot.conf"
        self.log_path = root / "dovecot.log"
        self.lmtp_socket = root / "run" / "lmtp"
        self.imap_port = self.lmtp_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        for sub in ("run", "state", "mail", "home"):
            (root / sub).mkdir(exist_ok=True)
        if len(str(self.lmtp_socket)) > 90:  # sun_path holds 108 bytes, and Dovecot's own names
            raise ValueError(f"{root} is too long a path for Dovecot's Unix sockets")

    # --- users -----------------------------------------------------------------------------------
    def add_user(
        self,
        address: str,
        password: str = "secret",
        *,
        maildir: Path | None = None,
        quota: str | None = None,
    ) -> Path:
        """Add a user; without `maildir`, a fresh one below root/mail, owned by the mail user.

        The passwd-file is rewritten at once; Dovecot reads it again on its next lookup.
        """
        if maildir is None:
            maildir = self.root / "mail" / address
            for sub in ("tmp", "new", "cur"):
                (maildir / sub).mkdir(parents=True, exist_ok=True)
            chown_tree(maildir, self.owner)
        home = self.root / "home" / address
        home.mkdir(parents=True, exist_ok=True)
        chown_tree(home, self.owner)
        if any(c.isspace() or c == ":" for c in f"{address}{password}{maildir}{home}"):
            raise ValueError("no spaces or colons in a passwd-file entry")
        self.users[address] = User(address, password, maildir, home, quota)
        text = "".join(user.line(self.owner) + "\n" for user in self.users.values())
        path = self.root / "users"
        path.write_text(text)
        path.chmod(0o644)  # read by the auth process, which runs as the dovecot user
        return maildir

    def own(self, path: Path) -> None:
        """Give `path`'s tree to the mail user Dovecot serves it as."""
        chown_tree(path, self.owner)

    # --- running ---------------------------------------------------------------------------------
    def render(self) -> str:
        return CONFIG.substitute(
            root=self.root,
            instance=f"mailgate-test-{self.root.name}",
            imap_port=self.imap_port,
            lmtp_port=self.lmtp_port,
        )

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already started"
        for attempt in range(1, START_ATTEMPTS + 1):
            self.imap_port, self.lmtp_port = free_port(), free_port()
            self.config_path.write_text(self.render())
            stderr = open(self.root / "dovecot.stderr", "ab")  # noqa: SIM115 - the process's
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group, so stop() can end every child
            )
            stderr.close()
            try:
                if self._wait_ready(timeout):
                    return
            except BaseException:
                self.stop()
                raise
            self.stop()
            if "Address already in use" not in self.output() or attempt == START_ATTEMPTS:
                raise AssertionError(f"Dovecot did not start:\n{self.output()}")

    def _wait_ready(self, timeout: float) -> bool:
        """True once IMAP and LMTP greet; False if the master exited; raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if _greets(self.imap_port, b"* OK") and _greets(self.lmtp_port, b"220"):
                return True
            time.sleep(0.05)
        raise AssertionError(f"Dovecot did not answer within {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM (the master takes 1-6 s, mostly waiting for its log process), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # The master's children (auth, imap, lmtp, ...) share its group: none outlives a test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and live_members(proc.pid):
            time.sleep(0.02)

    def __enter__(self) -> Dovecot:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- talking to it ---------------------------------------------------------------------------
    def imap(self, address: str) -> imaplib.IMAP4:
        """An IMAP session logged in as `address`."""
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        conn.login(address, self.users[address].password)
        return conn

    def lmtp(self, *, unix: bool = False) -> smtplib.LMTP:
        """An LMTP client connected over TCP, or over the Unix socket."""
        if unix:
            return smtplib.LMTP(str(self.lmtp_socket), timeout=10)
        return smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=10)

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.doveadm_binary, "-c", str(self.config_path), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if ": Error: " in line]

    def output(self) -> str:
        stderr = self.root / "dovecot.stderr"
        text = stderr.read_text(errors="replace") if stderr.exists() else ""
        return f"--- stderr\n{text}--- {self.log_path}\n{self.log()}"


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` still running (zombies, left for init to reap, do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(stat.parent.name))
    return found


def _greets(port: int, prefix: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(512).startswith(prefix)
    except OSError:
        return False
