"""Where one SMTP session's cycle goes, step by step, from the packets on the loopback.

    .venv/bin/python bench/cycle.py [--servers mailgate,postfix,sink] [--messages 4000]
        [--size 5120] [--runs 2] [--src DIR] [--tmp-dir DIR]

Each server in turn (alternating, --runs times): mailgate accepting only (the postoffice
connector paused), a private Postfix holding what it accepts (tests/support/postfix.py) and
Postfix's smtp-sink (C, keeps nothing), driven by `smtp-source -d -s 1 -m MESSAGES -l SIZE`
while `tcpdump -i lo` records the session's packets (their first bytes only). Every packet
with a payload is one step; a step's time is the gap since the packet before it, so a
server step (`S: 250 <- MAIL`: from the client's MAIL to the server's 250) is the server's
turnaround, a client step (`C: RCPT <- 250`) the client's, each including the wake-up of
the side that answers. Printed per server: the rate, then p50 and mean in microseconds of
the steps of a message (MAIL, RCPT, DATA, the body, each answered), and the mean cycle (the
sum of the means). Needs tcpdump (Debian package tcpdump) and the right to capture on lo
(root, or CAP_NET_RAW). Figures vary with the machine's state: compare servers of one run.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailgate_instance import Mailgate, add_mailgate_options
from measure import BenchError, SmtpSink, new_run_dir, remove_leftovers, smtp_source

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAILBOX = "u1@po.bench.bench.test"  # mailgate's MS:BENCH/PO/U1; Postfix gets the same address
# The steps of one message, in order: (side, what it sent, what it answers).
STEPS = (
    ("S", "250", "MAIL"),
    ("C", "RCPT", "250"),
    ("S", "250", "RCPT"),
    ("C", "DATA", "250"),
    ("S", "354", "DATA"),
    ("C", "body", "354"),
    ("S", "250", "body"),
    ("C", "MAIL", "250"),
)
_WORDS = frozenset(("MAIL", "RCPT", "DATA", "250", "354", "QUIT", "221"))
_LINK_HEADER = {0: 4, 1: 14, 113: 16, 276: 20}  # null, Ethernet, Linux cooked v1 and v2


def read_pcap(path: Path, server_port: int) -> list[tuple[float, bool, str]]:
    """(time, sent by the server, first word) of every TCP packet with a payload."""
    data = path.read_bytes()
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    link = struct.unpack(order + "I", data[20:24])[0]
    skip = _LINK_HEADER.get(link)
    if skip is None:
        raise BenchError(f"pcap link type {link} not understood")
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, kept, _ = struct.unpack(order + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + kept]
        offset += 16 + kept
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        payload = total - ihl - (tcp[12] >> 4) * 4
        if payload <= 0:
            continue
        first = tcp[(tcp[12] >> 4) * 4 :][:4].decode("latin-1").strip().upper()
        sport = struct.unpack(">H", tcp[0:2])[0]
        packets.append((seconds + fraction * scale, sport == server_port, first))
    return packets


def steps(packets: list[tuple[float, bool, str]]) -> dict[str, list[float]]:
    """Microseconds of each step of STEPS, over every message of the session. A client
    packet after the 354 (or after another such packet) is the body; a body in several
    segments is one step, answered from its last segment."""
    names = {(side, sent, answers): f"{side}: {sent} <- {answers}" for side, sent, answers in STEPS}
    found: dict[str, list[float]] = {}
    previous: tuple[float, str] | None = None  # (time, label) of the packet before
    for when, by_server, word in packets:
        label = word if word in _WORDS else "?"
        if not by_server and previous is not None and previous[1] in ("354", "body"):
            label = "body"
        if previous is not None:
            key = names.get(("S" if by_server else "C", label, previous[1]))
            if key is not None:
                found.setdefault(key, []).append((when - previous[0]) * 1e6)
        previous = (when, label)
    return found


def capture(port: int, directory: Path, drive: Callable[[], float]) -> tuple[float, Path]:
    """Run `drive` (returns the seconds the load took) while tcpdump records `port`."""
    pcap = directory / f"cycle-{port}.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-s", "128", "-U", "-w", str(pcap), f"tcp port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not pcap.exists() and time.monotonic() < deadline and dump.poll() is None:
            time.sleep(0.05)
        if dump.poll() is not None:
            raise BenchError(f"tcpdump failed: {dump.stderr.read().decode()[-300:]}")  # type: ignore[union-attr]
        time.sleep(0.5)  # tcpdump opens its file before its capture is armed
        seconds = drive()
        time.sleep(0.3)
    finally:
        dump.terminate()
        dump.wait(10)
    return seconds, pcap


def load(port: int, args: argparse.Namespace, recipient: str) -> float:
    run = smtp_source(
        port, sessions=1, messages=args.messages, length=args.size, sender="s@bench.test",
        recipient=recipient, timeout=600,
    )  # fmt: skip
    if run.error:
        raise BenchError(run.error)
    return run.seconds


def run_server(name: str, args: argparse.Namespace) -> tuple[float, dict[str, list[float]]]:
    """One run of one server: (messages per second, steps)."""
    root = new_run_dir(f"cycle-{name}-", args.tmp_dir, keep=False)
    if name == "sink":
        sink = SmtpSink(args.smtp_sink)
        try:
            seconds, pcap = capture(sink.port, root, lambda: load(sink.port, args, "r@sink.test"))
            return args.messages / seconds, steps(read_pcap(pcap, sink.port))
        finally:
            sink.stop()
    if name == "postfix":
        from tests.support.postfix import PostfixInstance

        pf = PostfixInstance(root, mailboxes=[MAILBOX], hold=True)
        pf.start()
        try:
            seconds, pcap = capture(pf.port, root, lambda: load(pf.port, args, MAILBOX))
            return args.messages / seconds, steps(read_pcap(pcap, pf.port))
        finally:
            pf.stop(30)
    (root / "mailgate").mkdir()
    mg = Mailgate(root / "mailgate", args.python, src=args.src, commit_stats=False)
    address = mg.add_mailboxes()[0]
    mg.start()
    try:
        mg.set_paused("postoffice", True)
        seconds, pcap = capture(mg.port, root, lambda: load(mg.port, args, address))
        return args.messages / seconds, steps(read_pcap(pcap, mg.port))
    finally:
        mg.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="mailgate,postfix,sink")
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--smtp-sink", default="/usr/sbin/smtp-sink")
    p.add_argument("--tmp-dir", default=None, help="where runs write (default: the system's)")
    add_mailgate_options(p)
    args = p.parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    rates: dict[str, list[float]] = {s: [] for s in servers}
    found: dict[str, dict[str, list[float]]] = {s: {} for s in servers}
    try:
        for run in range(args.runs):
            for server in servers if run % 2 == 0 else reversed(servers):
                rate, measured = run_server(server, args)
                print(f"  run {run + 1} {server}: {rate:.0f} msg/s", flush=True)
                rates[server].append(rate)
                for step, values in measured.items():
                    found[server].setdefault(step, []).extend(values)
    finally:
        remove_leftovers()
    print(f"\none session, {args.messages} messages of {args.size} bytes, {args.runs} runs each")
    header = "| step | " + " | ".join(f"{s} p50 / mean us" for s in servers) + " |"
    print(header)
    print("|---|" + "---:|" * len(servers))
    for side, sent, answers in STEPS:
        step = f"{side}: {sent} <- {answers}"
        cells = []
        for server in servers:
            values = found[server].get(step, [])
            cells.append(
                f"{statistics.median(values):.0f} / {statistics.mean(values):.0f}"
                if values
                else "-"
            )
        print(f"| {step} | " + " | ".join(cells) + " |")
    cycle = [
        sum(statistics.mean(v) for v in found[s].values() if v) if found[s] else 0.0
        for s in servers
    ]
    print("| cycle (sum of means) | " + " | ".join(f"{c:.0f}" for c in cycle) + " |")
    print(
        "| msg/s (median) | "
        + " | ".join(f"{statistics.median(rates[s]):.0f}" for s in servers)
        + " |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
