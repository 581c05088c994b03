"""Throughput benchmark: N concurrent SMTP sessions against a real `mailgate run` over loopback.

    .venv/bin/python bench/throughput.py [--sessions 10] [--messages 5000] [--size 5120]
                                         [--client asyncio|smtp-source] [--runs 1]

Each run starts a fresh `mailgate run` subprocess on a new temporary data directory and a
free 127.0.0.1 port, creates mailboxes MS:BENCH/PO/U1..U4, sends `--messages` messages of
`--size` bytes over `--sessions` persistent SMTP sessions, waits (with a deadline) until the
Maildir new/ directories hold every accepted message, stops mailgate (SIGTERM, SIGKILL after a
deadline); the data directories are removed after the last run. Durability is the service's
own: every 250 after DATA comes after a fsync'd SQLite commit (group commit).

Measured per run:

- accept_msgs_per_s: messages answered 250 after DATA / wall time from the first connect to the
  last 250 (smtp-source: from starting it to its exit).
- deliver_msgs_per_s: delivered messages / wall time from the first 250 to the moment the last
  message was linked into a new/ directory (the newest mtime of the new/ directories, read once
  they hold every accepted message). Delivery runs concurrently with acceptance, so this is
  bounded by the accept rate.
- p50/p99 DATA-to-250 latency (asyncio client only): from writing the final "." to reading the
  reply.
- mailgate CPU seconds (from /proc, summed over the process and any worker processes below
  it: bench/measure.py) from just before the load starts to the end of delivery, the bench
  client's own CPU seconds, and host CPU use in that window.
- run directories are removed after the last run (see measure.LEFTOVERS for why not in
  between).
- commit batches: mailgate runs as `python -m mailgate run` with a sitecustomize.py
  (bench/mailgate_instance.py, HOOK) first on its PYTHONPATH, so it and any worker processes
  write the group committer's statistics() and how many operations of each kind it committed
  when the commit thread ends; --no-commit-stats leaves the hook out.
- other processes: CPU the rest of the machine used meanwhile (tick-accounted, approximate).
  Each run first waits (--quiet-timeout) for an idle host; a non-zero other_cpu_s in the
  summary means someone else's job competed for the 2 CPUs and the figures are low.

Options worth knowing:

- --client smtp-source: Postfix's smtp-source (-d, persistent sessions, no PIPELINING, one
  recipient, all messages to U1) instead of the asyncio client.
- --no-pipelining: the asyncio client sends MAIL, RCPT and DATA one at a time.
- --experiment-nodelay: the hook sets TCP_NODELAY on mailgate's accepted sockets. mailgate's
  listening socket is created with protocol 0, so asyncio does not set TCP_NODELAY on the
  sessions; with PIPELINING the replies to MAIL and RCPT then wait for the client's delayed
  ACK (~40 ms per message). This flag measures what setting it would change.
- --compare-postfix: after each mailgate run, the same smtp-source load against a private
  Postfix instance (tests/support/postfix.py: `postfix -c TMPDIR/etc`, own queue, own loopback
  port, virtual(8) delivery into a Maildir as `nobody`); the system's Postfix and /etc/postfix
  are not touched. Needs root. bench/vs_postfix.py is the full comparison (accept only,
  Maildir, relay; 1, 10 and 50 sessions; a slow-flush disk).
- --relay: every recipient is remote and goes to the smarthost connector, Postfix's smtp-sink
  here; "delivered" is what smtp-sink received.
- --src DIR: run mailgate from another src/ directory (e.g. a `git archive HEAD src` snapshot
  while the working tree is being edited).

The last line of each run is one stable, greppable summary:

    accept_msgs_per_s=1234.5 deliver_msgs_per_s=987.6 sessions=10 size=5120 messages=5000 ...

The asyncio client speaks SMTP directly over asyncio streams and uses PIPELINING (advertised
by mailgate): MAIL, RCPT and DATA go in one write, and the next message's MAIL/RCPT/DATA ride
in the same write as the previous message's final ".". Client and server share the machine's
CPUs, so the client is kept lean: one read per reply line, one write per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailgate_instance import (
    CONFIG,
    ROOT,
    Mailgate,
    add_mailgate_options,
    mailgate_origin,
    with_setting,
)
from measure import (
    BenchError,
    SmtpSink,
    add_run_options,
    busy_fraction,
    host_cpu_jiffies,
    journal_note,
    new_run_dir,
    other_cpu,
    percentile,
    remove_leftovers,
    run_option_defaults,
    smtp_source,
    tree_cpu_seconds,
    user_sys_cpu,
    wait_delivered,
    wait_for_quiet,
)

sys.path.insert(0, str(ROOT))  # tests.support.postfix: the private Postfix the tests use too
from tests.support.postfix import PostfixError, PostfixInstance

SENDER = "sender@bench.test"
POSTFIX_MAILBOX = "u1@po.bench.bench.test"
# Header bytes smtp-source adds on top of its -l payload (From, To, Date, Message-Id and the
# blank line; measured with Postfix 3.7's smtp-source), so both clients send about --size bytes.
SMTP_SOURCE_HEADER_BYTES = 150


# --- the asyncio SMTP client ------------------------------------------------------------------


@dataclass
class ClientResult:
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_connect: float = 0.0  # monotonic
    first_250: float = 0.0  # monotonic
    first_250_wall: float = 0.0  # time.time()
    last_250: float = 0.0  # monotonic
    progress: int = 0  # replies read, for the stall watchdog


def message_header(number: int, recipient: str) -> bytes:
    """Headers of message `number`; the same length for every number below 10**8."""
    return (
        f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: bench {number:08d}\r\n"
        f"Message-ID: <bench.{number:08d}@bench.test>\r\n\r\n"
    ).encode()


def message_filler(header_length: int, size: int) -> bytes:
    """Body lines (76 characters, CRLF) that bring a message to about `size` bytes."""
    line = b"x" * 76 + b"\r\n"
    lines, rest = divmod(max(size - header_length, 3), len(line))
    return line * lines + (b"y" * max(rest - 2, 1) + b"\r\n" if rest else b"")


async def read_reply(reader: asyncio.StreamReader, result: ClientResult) -> bytes:
    """One (possibly multi-line) reply; returns its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by mailgate")
        if line[3:4] != b"-":
            result.progress += 1
            return line


async def session(
    port: int,
    recipients: list[str],
    size: int,
    numbers: Iterator[int],
    result: ClientResult,
    pipelining: bool,
) -> None:
    if not result.first_connect:
        result.first_connect = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await read_reply(reader, result)
        if not greeting.startswith(b"220"):
            raise ConnectionError(f"greeting {greeting!r}")
        writer.write(b"EHLO bench.client\r\n")
        if not (await read_reply(reader, result)).startswith(b"250"):
            raise ConnectionError("EHLO refused")
        fillers: dict[str, bytes] = {}

        def envelope(number: int) -> bytes:
            rcpt = recipients[number % len(recipients)]
            return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()

        def message(number: int) -> bytes:
            rcpt = recipients[number % len(recipients)]
            header = message_header(number, rcpt)
            filler = fillers.get(rcpt)
            if filler is None:
                filler = fillers[rcpt] = message_filler(len(header), size)
            return header + filler

        number = next(numbers, None)
        written = False  # whether the envelope of `number` went out with the previous "."
        while number is not None:
            if pipelining:
                if not written:
                    writer.write(envelope(number))
                replies = [await read_reply(reader, result) for _ in range(3)]
            else:
                replies = []
                for command in envelope(number).splitlines(keepends=True):
                    writer.write(command)
                    replies.append(await read_reply(reader, result))
            following = next(numbers, None)
            if not replies[2].startswith(b"354"):
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"MAIL/RCPT/DATA answered {replies!r}")
                number, written = following, False
                continue
            payload = message(number) + b".\r\n"
            written = False
            if pipelining and following is not None:
                payload += envelope(following)
                written = True
            sent = time.monotonic()
            writer.write(payload)
            reply = await read_reply(reader, result)
            now = time.monotonic()
            if reply.startswith(b"250"):
                result.accepted += 1
                result.latencies.append(now - sent)
                if not result.first_250:
                    result.first_250, result.first_250_wall = now, time.time()
                result.last_250 = now
            else:
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"after DATA: {reply!r}")
            number = following
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(ConnectionError):
            await read_reply(reader, result)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def drive(
    port: int,
    recipients: list[str],
    sessions: int,
    messages: int,
    size: int,
    deadline: float,
    stall: float,
    pipelining: bool,
) -> ClientResult:
    """Run every session to completion; give up at `deadline` or after `stall` idle seconds."""
    result = ClientResult()
    numbers = iter(range(messages))  # shared: each session takes the next message number
    tasks = [
        asyncio.create_task(session(port, recipients, size, numbers, result, pipelining))
        for _ in range(sessions)
    ]
    last_progress, last_change = -1, time.monotonic()
    pending: set[asyncio.Task[None]] = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        now = time.monotonic()
        if result.progress != last_progress:
            last_progress, last_change = result.progress, now
        reason = None
        if now > deadline:
            reason = "run deadline passed"
        elif now - last_change > stall:
            reason = f"no SMTP reply for {stall:.0f}s"
        if reason:
            result.errors.append(reason)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=10)
            break
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled()]
    result.errors.extend(f"session failed: {exc!r}" for exc in failures[:10] if exc)
    return result


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    server: str
    client: str
    sessions: int
    size: int
    messages: int
    pipelining: bool
    nodelay: bool
    accepted: int = 0
    refused: int = 0
    delivered: int = 0
    accept_seconds: float = 0.0
    deliver_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    host_busy: float = 0.0
    other_cpu: float = 0.0
    commit: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


def new_measurement(args: argparse.Namespace, server: str, client: str) -> Measurement:
    return Measurement(
        server,
        client,
        args.sessions,
        args.size,
        args.messages,
        pipelining=client == "asyncio" and args.pipelining,
        nodelay=server == "mailgate" and args.experiment_nodelay,
    )


def run_smtp_source(args: argparse.Namespace, port: int, recipient: str, m: Measurement) -> None:
    """smtp-source against `port`; sets accept_seconds and client_cpu of `m`."""
    source = smtp_source(
        port,
        sessions=args.sessions,
        messages=args.messages,
        length=max(1, args.size - SMTP_SOURCE_HEADER_BYTES),
        sender=SENDER,
        recipient=recipient,
        timeout=args.timeout,
        path=args.smtp_source,
    )
    m.accept_seconds, m.client_cpu = source.seconds, source.client_cpu
    if source.error:
        m.errors.append(source.error)


def mailgate_config(args: argparse.Namespace) -> str:
    config = CONFIG
    if args.postoffice_threads:
        config = with_setting(config, "postoffice", f"threads = {args.postoffice_threads}")
    if args.receive:
        config = with_setting(config, "processes", f"receive = {args.receive}")
    return config


def run_mailgate(args: argparse.Namespace) -> Measurement:
    m = new_measurement(args, "mailgate-relay" if args.relay else "mailgate", args.client)
    root = new_run_dir("mailgate-bench-", args.tmp_dir, args.keep)
    mg = Mailgate(
        root,
        args.python,
        src=args.src,
        config=mailgate_config(args),
        commit_stats=args.commit_stats,
        nodelay=args.experiment_nodelay,
    )
    sink: SmtpSink | None = None
    try:
        recipients = mg.add_mailboxes()
        if args.relay:
            sink = SmtpSink(args.smtp_sink)
            mg.smarthost = f"127.0.0.1:{sink.port}"
            recipients = [f"r{n}@relay.example" for n in range(len(recipients))]
        mg.start()
        cpu_before = mg.cpu_seconds()
        host_before = host_cpu_jiffies()
        deadline = time.monotonic() + args.timeout
        if args.client == "asyncio":
            client_before = user_sys_cpu(resource.RUSAGE_SELF)
            result = asyncio.run(
                drive(
                    mg.port,
                    recipients,
                    args.sessions,
                    args.messages,
                    args.size,
                    deadline,
                    args.stall_timeout,
                    args.pipelining,
                )
            )
            m.client_cpu = user_sys_cpu(resource.RUSAGE_SELF) - client_before
            m.accepted, m.refused, m.errors = result.accepted, result.refused, result.errors
            m.latencies = result.latencies
            m.accept_seconds = result.last_250 - result.first_connect if result.accepted else 0.0
            first_250_wall = result.first_250_wall
        else:
            run_smtp_source(args, mg.port, recipients[0], m)
            # Who got a 250 is what mailgate logged as received (event 3000).
            m.accepted, first = mg.received_events()
            m.refused = args.messages - m.accepted
            first_250_wall = first or 0.0
        host_accept = host_cpu_jiffies()
        m.other_cpu = other_cpu(
            host_before, host_accept, mg.cpu_seconds() - cpu_before + m.client_cpu
        )
        if m.accepted:
            if sink is not None:
                m.delivered, last_link = sink.wait_received(m.accepted, args.deliver_timeout)
            else:
                m.delivered, last_link = wait_delivered(
                    mg.new_dirs(), m.accepted, args.deliver_timeout, mg.alive
                )
            m.deliver_seconds = max(last_link - first_250_wall, 1e-9)
            if m.delivered < m.accepted:
                m.errors.append(f"only {m.delivered} of {m.accepted} delivered before the deadline")
        m.server_cpu = mg.cpu_seconds() - cpu_before
        m.host_busy = busy_fraction(host_before, host_accept)
    finally:
        status = mg.stop(args.stop_timeout)
        if status not in (0, None) or (status is None and mg.proc is not None):
            m.errors.append(f"mailgate stop: exit status {status}; stderr: {mg.stderr()[-300:]}")
        m.commit = mg.read_commit_stats()
        if sink is not None:
            sink.stop()
    return m


def run_postfix(args: argparse.Namespace) -> Measurement:
    """The same smtp-source load against a private Postfix instance delivering to a Maildir."""
    m = new_measurement(args, "postfix", "smtp-source")
    root = new_run_dir("postfix-bench-", args.tmp_dir, args.keep)
    pf = PostfixInstance(root, mailboxes=[POSTFIX_MAILBOX], postfix=args.postfix)
    try:
        pf.start()
        cpu_before = tree_cpu_seconds(pf.master_pid())
        host_before = host_cpu_jiffies()
        started_wall = time.time()
        run_smtp_source(args, pf.port, POSTFIX_MAILBOX, m)
        host_accept = host_cpu_jiffies()
        cpu_accept = tree_cpu_seconds(pf.master_pid()) - cpu_before
        m.other_cpu = other_cpu(host_before, host_accept, cpu_accept + m.client_cpu)
        m.accepted = args.messages if not m.errors else pf.accepted()
        m.refused = args.messages - m.accepted
        if m.accepted:
            m.delivered, last_link = wait_delivered(
                [pf.maildir(POSTFIX_MAILBOX) / "new"], m.accepted, args.deliver_timeout, pf.alive
            )
            m.deliver_seconds = max(last_link - started_wall, 1e-9)
            if m.delivered < m.accepted:
                m.errors.append(f"only {m.delivered} of {m.accepted} delivered before the deadline")
        m.server_cpu = tree_cpu_seconds(pf.master_pid()) - cpu_before
        m.host_busy = busy_fraction(host_before, host_accept)
    except PostfixError as exc:
        m.errors.append(str(exc))
    finally:
        problem = pf.stop(args.stop_timeout)
        if problem:
            m.errors.append(problem)
    return m


def report(m: Measurement) -> str:
    accept_rate = m.accepted / m.accept_seconds if m.accept_seconds > 0 else 0.0
    deliver_rate = m.delivered / m.deliver_seconds if m.deliver_seconds > 0 else 0.0
    since = "the first 250" if m.server.startswith("mailgate") else "the start of smtp-source"
    print(
        f"  {m.server}: accepted {m.accepted}/{m.messages} in {m.accept_seconds:.3f}s "
        f"(refused {m.refused}); delivered {m.delivered} in {m.deliver_seconds:.3f}s "
        f"from {since}"
    )
    if m.latencies:
        print(
            "  DATA-to-250 latency ms: "
            f"p50={percentile(m.latencies, 50) * 1000:.2f} "
            f"p90={percentile(m.latencies, 90) * 1000:.2f} "
            f"p99={percentile(m.latencies, 99) * 1000:.2f} "
            f"max={max(m.latencies) * 1000:.2f}"
        )
    per_msg = m.server_cpu / m.accepted * 1000 if m.accepted else 0.0
    print(
        f"  CPU: {m.server} {m.server_cpu:.2f}s ({per_msg:.2f} ms/msg), "
        f"client {m.client_cpu:.2f}s, host busy {m.host_busy * 100:.0f}% of "
        f"{os.cpu_count()} CPUs during the accept phase (other processes ~{m.other_cpu:.1f}s)"
    )
    commit = m.commit or {}
    if commit:
        kinds = commit.get("kinds") or {}
        print(
            f"  commits: {commit.get('batches')} batches, {commit.get('operations')} operations, "
            f"largest {commit.get('largest_batch')}, "
            f"{commit.get('batches_with_enqueue')} batches held enqueues; by kind {kinds}; "
            f"from {commit.get('processes')} process(es)"
        )
    for error in m.errors:
        print(f"  error: {error}")
    fields = {
        "accept_msgs_per_s": f"{accept_rate:.1f}",
        "deliver_msgs_per_s": f"{deliver_rate:.1f}",
        "sessions": m.sessions,
        "size": m.size,
        "messages": m.messages,
        "client": m.client,
        "server": m.server,
        "pipelining": "yes" if m.pipelining else "no",
        "nodelay_experiment": "yes" if m.nodelay else "no",
        "accepted": m.accepted,
        "refused": m.refused,
        "delivered": m.delivered,
        "p50_ms": f"{percentile(m.latencies, 50) * 1000:.2f}" if m.latencies else "-",
        "p99_ms": f"{percentile(m.latencies, 99) * 1000:.2f}" if m.latencies else "-",
        "server_cpu_s": f"{m.server_cpu:.2f}",
        "client_cpu_s": f"{m.client_cpu:.2f}",
        "other_cpu_s": f"{m.other_cpu:.1f}",
        "commit_batches": commit.get("batches", "-"),
        "errors": len(m.errors),
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    p.add_argument("--messages", type=int, default=5000, help="messages in total")
    p.add_argument("--size", type=int, default=5120, help="message size in bytes")
    p.add_argument("--client", choices=("asyncio", "smtp-source"), default="asyncio")
    p.add_argument(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="asyncio client: send MAIL, RCPT, DATA one at a time (like smtp-source)",
    )
    p.add_argument(
        "--experiment-nodelay",
        action="store_true",
        help="experiment: set TCP_NODELAY on mailgate's accepted sockets (through the hook)",
    )
    p.add_argument("--runs", type=int, default=1, help="runs, each on a fresh mailgate")
    p.add_argument(
        "--compare-postfix",
        action="store_true",
        help="after each run, send the same smtp-source load to a private Postfix instance "
        "(own config dir, queue and port; delivers to a Maildir; needs root)",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="relay path: every recipient is remote and goes to a smarthost, Postfix's "
        "smtp-sink; 'delivered' counts what the smarthost connector delivered",
    )
    p.add_argument(
        "--receive",
        type=int,
        default=0,
        help="mailgate receive processes ([processes] receive; 0: one per core)",
    )
    p.add_argument(
        "--postoffice-threads",
        type=int,
        default=0,
        help="mailgate delivery threads ([postoffice] threads; 0: mailgate's default)",
    )
    p.add_argument("--stall-timeout", type=float, default=30.0, help="give up after no reply")
    p.add_argument(
        "--no-commit-stats",
        dest="commit_stats",
        action="store_false",
        help="run plain `python -m mailgate` (no committer statistics)",
    )
    add_mailgate_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    if args.sessions < 1 or args.messages < 1 or args.size < 64 or args.runs < 1:
        p.error("--sessions, --messages and --runs must be >= 1, --size >= 64")
    run_option_defaults(args)
    needs_source = args.client == "smtp-source" or args.compare_postfix
    if needs_source and not os.access(args.smtp_source, os.X_OK):
        p.error(f"{args.smtp_source} is not executable")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so every `finally` (stop mailgate, remove the data) runs

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        origin = mailgate_origin(args.python, args.src)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mailgate from {origin} (run by {args.python})", flush=True)
    note = journal_note(args.tmp_dir or tempfile.gettempdir())
    if note:
        print(note, flush=True)
    try:
        return run_all(args)
    finally:
        remove_leftovers()


def run_all(args: argparse.Namespace) -> int:
    failed = False
    for run in range(1, args.runs + 1):
        print(
            f"run {run}/{args.runs}: client={args.client} sessions={args.sessions} "
            f"messages={args.messages} size={args.size}",
            flush=True,
        )
        runs = [run_mailgate] + ([run_postfix] if args.compare_postfix else [])
        for one in runs:
            if args.quiet_timeout > 0:
                busy = wait_for_quiet(0.10, args.quiet_timeout)
                if busy > 0.10:
                    print(f"  warning: host still {busy:.0%} busy before the run", flush=True)
            try:
                m = one(args)
            except BenchError as exc:
                print(f"  error: {exc}", flush=True)
                failed = True
                continue
            print(report(m), flush=True)
            failed |= bool(m.errors) or m.accepted < m.messages or m.delivered < m.accepted
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
