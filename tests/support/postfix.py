"""A private Postfix (`postfix -c DIR`) on a loopback port, for tests and benchmarks.

main.cf and master.cf are rendered into the instance's own directory: own queue, data and log
(postlogd), SMTP on 127.0.0.1:PORT, IPv4 only, no DNS (native lookups, numeric relayhost, no
client name lookup), no chroot. It delivers to Maildirs as `nobody` (virtual(8)), holds every
message, and/or relays to `[127.0.0.1]:PORT` (smtp(8)). The system's Postfix (/etc/postfix,
port 25, its queue) is never touched: every path written is below the root; only the package's
postfix-files and dynamicmaps.cf are read. Needs root. `start` raises PostfixError with the
log's tail; `stop` never raises: postfix stop, postfix abort, then SIGKILL of what is left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.process import free_port

POSTFIX = "/usr/sbin/postfix"
DEFAULT_MAILBOX = "u1@postfix.test"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = {relay}
smtpd_recipient_restrictions = {recipient_restrictions}
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
relayhost = {relayhost}
default_transport = {default_transport}
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{etc}/virtual_mailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
import_environment = {import_environment}
"""
# Only the services needed, none chrooted, SMTP on a loopback port of the instance's own.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
DEFAULT_IMPORT_ENVIRONMENT = "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C"


class PostfixError(Exception):
    pass


class PostfixInstance:
    """One private Postfix.

    `mailboxes` (addresses; their domains are the virtual domains) are Maildirs below
    `root/mail`. Mail for any other domain is relayed to `relayhost` (numeric
    "127.0.0.1:PORT"); without one it is refused at RCPT (554 relay access denied) and mail
    the instance makes itself, such as a bounce, fails at once instead of looking up an MX.
    `hold` puts every accepted message on the hold queue. `main_cf` adds or overrides main.cf
    settings (e.g. `queue_run_delay = 1s` for fast retries); `environment` reaches every
    Postfix daemon (import_environment NAME=VALUE: the master passes on nothing else).

    `root` must be reachable by `nobody` (every parent directory searchable), since
    virtual(8) delivers as nobody below it: a fresh tempfile.mkdtemp() under /tmp is (see
    `private`).
    """

    def __init__(
        self,
        root: Path,
        *,
        mailboxes: Sequence[str] = (DEFAULT_MAILBOX,),
        relayhost: str | None = None,
        hold: bool = False,
        main_cf: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        postfix: str = POSTFIX,
    ) -> None:
        self.root = root
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.mailboxes = [m.lower() for m in mailboxes]
        self.domains = sorted({m.rpartition("@")[2] for m in self.mailboxes})
        self.relayhost = relayhost
        self.hold = hold
        self.main_cf = dict(main_cf or {})
        self.environment = dict(environment or {})
        self.postfix = postfix
        self.port = 0
        self.started = False
        self.nobody = pwd.getpwnam("nobody")
        self.mail_owner = pwd.getpwnam("postfix")

    # --- configuration ---------------------------------------------------------------------------
    def render(self) -> None:
        """Write main.cf, master.cf and the mailbox table; pick the SMTP port."""
        for name, value in self.environment.items():
            if not name.isidentifier() or any(c.isspace() for c in value):
                raise PostfixError(f"environment {name}={value!r}: no spaces, a plain name")
        host, _, port = (self.relayhost or "127.0.0.1:0").rpartition(":")
        try:
            socket.inet_aton(host)  # numeric only: nothing may need DNS
            int(port)
        except (OSError, ValueError):
            raise PostfixError(
                f"relayhost {self.relayhost!r}: not a numeric IPv4 HOST:PORT"
            ) from None
        self.port = free_port()
        environment = " ".join(
            [DEFAULT_IMPORT_ENVIRONMENT, *(f"{k}={v}" for k, v in self.environment.items())]
        )
        values: dict[str, Any] = {
            "root": self.root,
            "etc": self.etc,
            "domains": ", ".join(self.domains),
            "uid": self.nobody.pw_uid,
            "gid": self.nobody.pw_gid,
            "port": self.port,
            "relayhost": "" if self.relayhost is None else f"[{host}]:{port}",
            "default_transport": "smtp" if self.relayhost else "error:5.4.4 no relayhost here",
            "relay": (
                "permit_mynetworks, reject" if self.relayhost else "reject_unauth_destination"
            ),
            # HOLD from an access table at RCPT: smtpd flags the message for cleanup(8),
            # which files it straight into the hold queue; qmgr never sees it.
            "recipient_restrictions": "check_client_access static:HOLD" if self.hold else "",
            "import_environment": environment,
        }
        main = MAIN_CF.format(**values) + "".join(f"{k} = {v}\n" for k, v in self.main_cf.items())
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(MASTER_CF.format(**values))
        # Explicit mailboxes: virtual(8) allows no regexp substitution into mailbox paths.
        table = "".join(f"{m} {self.maildir_path(m)}/\n" for m in self.mailboxes)
        (self.etc / "virtual_mailbox").write_text(table)

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix needs root (postfix(1) is for the superuser)")
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostfixError(
                    f"{parent} is not searchable by nobody (virtual(8) delivers as it)"
                )
        self.root.chmod(0o755)
        for sub in ("etc", "spool", "data", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        os.chown(self.root / "data", self.mail_owner.pw_uid, -1)
        os.chown(self.root / "mail", self.nobody.pw_uid, self.nobody.pw_gid)
        self.render()

    # --- running ---------------------------------------------------------------------------------
    def command(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.postfix, "-c", str(self.etc), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait for its SMTP greeting; PostfixError (after stopping) if not."""
        self._prepare()
        self.started = True
        try:
            started = self.command("start", timeout=timeout)
            if started.returncode != 0:
                raise PostfixError(f"postfix start: {started.stderr.strip()} {self.log_tail()}")
            self._wait_greeting(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_greeting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(512).startswith(b"220"):
                    return
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"no SMTP greeting on {self.port} in {timeout}s {self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> str | None:
        """Stop every process of the instance; what had to be forced, or None."""
        if not self.started:
            return None
        self.started = False
        master = self.master_pid()
        for verb in ("stop", "abort"):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.command(verb, timeout=timeout)
            if _wait(lambda: not self.processes(), timeout / 2):
                return None if verb == "stop" else "postfix stop did not end it; postfix abort did"
        left = self.processes()
        for pid in [*([master] if master else []), *left]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait(lambda: not self.processes(), 5.0)
        return f"postfix processes {sorted(left)} had to be killed"

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inspecting ------------------------------------------------------------------------------
    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.master_pid()
        return pid is not None and Path(f"/proc/{pid}").exists()

    def processes(self) -> list[int]:
        """Every process of this instance: postfix(1) gives each MAIL_CONFIG=<its etc>."""
        marker = f"MAIL_CONFIG={self.etc}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                        found.append(int(entry))
        return found

    @staticmethod
    def maildir_path(address: str) -> str:
        local, _, domain = address.lower().rpartition("@")
        if not local or "/" in address or local.startswith(".") or domain.startswith("."):
            raise PostfixError(f"mailbox {address!r}: not a plain local@domain")
        return f"{domain}/{local}"

    def maildir(self, address: str) -> Path:
        """The Maildir of a mailbox (it exists once something was delivered into it)."""
        return self.root / "mail" / self.maildir_path(address)

    def queue_count(self, queue: str) -> int:
        """Messages in one of the instance's queues (incoming, active, deferred, hold, ...)."""
        return sum(len(files) for _, _, files in os.walk(self.spool / queue))

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, chars: int = 800) -> str:
        return self.maillog()[-chars:]

    def accepted(self) -> int:
        """Messages that cleanup(8) took in (one `message-id=` line each)."""
        return sum(
            1
            for line in self.maillog().splitlines()
            if "/cleanup[" in line and "message-id=" in line
        )


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def private(**kwargs: Any) -> Iterator[PostfixInstance]:
    """A started instance in a fresh directory under the system's temp dir; stopped and
    removed on the way out, however it is left."""
    root = Path(tempfile.mkdtemp(prefix="postfix-"))
    try:
        with PostfixInstance(root, **kwargs) as instance:
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)
