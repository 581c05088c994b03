"""Profile mailgate's accept path: cProfile in the receive worker's SMTP (event loop) thread.

    .venv/bin/python bench/profile_accept.py [--sessions 10] [--messages 3000] [--size 5120]
        [--top 30] [--src DIR]

One receive worker, the postoffice connector paused (accept only, as bench/vs_postfix.py's
`accept` case), driven by smtp-source. A sitecustomize hook put first on the worker's
PYTHONPATH runs the `smtp` thread's body under cProfile, in thread CPU time (the machine
may be shared), and writes the stats when the thread ends (a clean stop); the commit
thread is not profiled (its cost is SQLite's and the disk's). Prints the accept rate, the
profiled thread's CPU seconds per message, and the functions with the most own and the
most cumulative time.
"""

from __future__ import annotations

import argparse
import glob
import pstats
import sys
import tempfile
from pathlib import Path

from mailgate_instance import CONFIG, Mailgate, add_mailgate_options, hook_path, with_setting
from measure import smtp_source

HOOK = """
import os

def _profile():
    try:
        from mailgate.receive import server
    except Exception:
        return
    original = server.SmtpListener.__call__
    out = os.environ["MAILGATE_PROFILE"]

    def __call__(self, handle):
        import cProfile, time
        profile = cProfile.Profile(time.thread_time)  # CPU time: the machine is shared
        profile.enable()
        try:
            return original(self, handle)
        finally:
            profile.disable()
            profile.dump_stats(f"{out}.{os.getpid()}")

    server.SmtpListener.__call__ = __call__

if os.environ.get("MAILGATE_PROFILE"):
    _profile()
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--top", type=int, default=30)
    add_mailgate_options(p)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="profile-accept-"))
    config = with_setting(CONFIG, "processes", "receive = 1")
    mg = Mailgate(root, args.python, src=args.src, config=config, commit_stats=False)
    mg.service_env = {
        "PYTHONPATH": hook_path(root, HOOK, args.src),
        "MAILGATE_PROFILE": str(root / "prof"),
    }
    address = mg.add_mailboxes()[0]
    mg.start()
    try:
        mg.set_paused("postoffice", True)
        run = smtp_source(
            mg.port, sessions=args.sessions, messages=args.messages, length=args.size,
            sender="s@bench.test", recipient=address, timeout=600,
        )  # fmt: skip
    finally:
        mg.stop()
    if run.error:
        print(run.error, file=sys.stderr)
    rate = args.messages / run.seconds
    [dump] = glob.glob(str(root / "prof.*"))
    stats = pstats.Stats(dump)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"{args.messages} messages, {args.sessions} sessions: {rate:.0f} msg/s; smtp thread "
        f"profiled {total:.2f}s = {1000 * total / args.messages:.3f} ms/msg (under cProfile)"
    )
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
