"""Q256187: too many files in a spool folder stopped the flow of the service we replace.

DESIGN §5 row 5: no unbounded directory on the hot path. With `[postoffice] quota` set,
every delivery used to list the whole mailbox (new/ and cur/) to learn its size, so a
mailbox of 100,000 messages cost 100,000 directory entries per delivery. The size is
now kept as a running figure in the Maildir++ `maildirsize` file (the one Dovecot and
Courier read), so the work per delivery must not depend on how full the mailbox is.

The proof is structural, not a timing: strace, attached to every thread of the process
that delivers, counts the getdents64 calls made on the mailbox's directories while 20
messages are delivered into a mailbox holding 100,000 files. The first delivery builds
`maildirsize` with one scan; after that there must be none.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import smtplib
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.tools import require

ALICE = "alice@po1.net1.example.test"
FILES = 100_000
ASSUMED = 1000  # the size each placeholder file claims in its name (,S=1000)
QUOTA = 1 << 30
CONFIG = DEFAULT_CONFIG.replace("[postoffice]\n", f"[postoffice]\nquota = {QUOTA}\n", 1)


def fill(cur: Path, count: int) -> None:
    """`count` empty files named as read messages that claim ASSUMED bytes each."""
    fd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in range(count):
            name = f"1700000000.M{n}P1.old.host,S={ASSUMED}:2,S"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


def send(mg: Mailgate, count: int, prefix: str) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=30) as client:
        for n in range(count):
            body = f"Subject: {prefix}{n}\r\n\r\nbody {n}\r\n"
            assert client.sendmail("s@example.org", [ALICE], body) == {}


def delivering_pid(mg: Mailgate) -> int:
    """The process whose threads deliver: the interchange worker."""
    status = json.loads(mg.cli("ctl", "status", "--json").stdout)
    for process in status["processes"]:
        if any(t["role"] == "interchange" for t in process["threads"]):
            return int(process["pid"])
    raise AssertionError("no interchange process")


def wait_attached(tracer: subprocess.Popen[bytes], threads: int, timeout: float) -> None:
    """strace writes "Process N attached" for each thread; read its stderr until then."""
    assert tracer.stderr is not None
    fd, seen, deadline = tracer.stderr.fileno(), b"", time.monotonic() + timeout
    while seen.count(b"attached") < threads:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"strace: {seen!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"strace ended: {seen!r}"
        seen += chunk


def quota_scans(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r"^mailgate_postoffice_quota_scans_total (\S+)$", text, re.M)
    assert found, "no mailgate_postoffice_quota_scans_total in /metrics"
    return float(found.group(1))


def test_delivery_into_a_mailbox_of_100000_files_reads_none_of_them(tmp_path: Path) -> None:
    strace = require("strace")
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    box = mg.mailbox_dir("NET1", "PO1", "ALICE")
    fill(box / "cur", FILES)
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    trace_path = tmp_path / "strace.out"
    tracer: subprocess.Popen[bytes] | None = None
    try:
        send(mg, 1, "first")  # builds maildirsize: the one scan allowed
        wait_for(lambda: len(list((box / "new").iterdir())) == 1, 30, what="first delivery")

        pid = delivering_pid(mg)
        tids = sorted(os.listdir(f"/proc/{pid}/task"))
        tracer = subprocess.Popen(
            [strace, "-y", "-e", "trace=getdents64", "-o", str(trace_path),
             *[arg for tid in tids for arg in ("-p", tid)]],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_attached(tracer, len(tids), timeout=20)

        send(mg, 20, "more")
        wait_for(lambda: len(list((box / "new").iterdir())) == 21, 60, what="20 deliveries")
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)

        mailbox = str(box)
        reads = [line for line in trace_path.read_text().splitlines() if mailbox in line]
        assert reads == [], f"{len(reads)} getdents64 calls on the mailbox: {reads[:3]}"
        # Counters reach the master with each worker's heartbeat (every second): poll.
        wait_for(lambda: quota_scans(admin) >= 1, 10, what="the scan counted")
        assert quota_scans(admin) == 1, "one scan in all, by the first delivery"
        lines = (box / "maildirsize").read_text().splitlines()
        assert lines[0] == f"{QUOTA}S", lines[:2]
        used = sum(int(line.split()[0]) for line in lines[1:])
        count = sum(int(line.split()[1]) for line in lines[1:])
        delivered = sum(p.stat().st_size for p in (box / "new").iterdir())
        assert (used, count) == (FILES * ASSUMED + delivered, FILES + 21)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait(10)
        mg.close()
