"""The dashboard's page times with a big queue: `python bench/dashboard.py --queued 100000`.

One `mailgate run` (master and workers) with the admin listener on a free loopback port and
the postoffice connector paused; the queue is filled through mailgate's own write operation
(bench/queue_fill.py, as bench/big_queue.py does), then each page is fetched --rounds times
over one keep-alive HTTP connection, as a browser would, and its time to the last byte is
reported (median, 90th percentile, worst) with the size of the page. The goal is 200 ms per
page with 100,000 messages queued. Pages: the overview (status with the queue counts, the
chart), threads, the queue list (first page, filtered, and a deep page found by keyset), one
message, events (all, and by severity), track (by queue id and by address), and the machine
endpoints /status, /metrics, /healthz for comparison. Prints a markdown table naming the
command.
"""

from __future__ import annotations

import argparse
import html
import http.client
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

from big_queue import fill
from mailgate_instance import CONFIG, NET, PO, Mailgate, add_mailgate_options
from measure import BenchError, command_text, free_port, git_describe, new_run_dir, remove_leftovers

GOAL_MS = 200.0
DEEP_HOPS = 100  # the deep page: 5,000 messages in


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, int, int]:
    """Seconds to the last byte, status and size of one GET."""
    started = time.perf_counter()
    conn.request("GET", path, headers={"Accept": "text/html"})
    reply = conn.getresponse()
    body = reply.read()
    return time.perf_counter() - started, reply.status, len(body)


def page_of(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def first_id(body: str) -> str:
    found = re.search(r'data-queue-id="([^"]+)"', body)
    if found is None:
        raise BenchError("no message on the queue page")
    return found.group(1)


def deep_page(conn: http.client.HTTPConnection, hops: int) -> str:
    """The path of the queue page `hops` pages in, reached by following its `next` links."""
    path = "/queue"
    for _ in range(hops):
        found = re.search(r'href="([^"]+)" id="next"', page_of(conn, path))
        if found is None:
            break
        path = html.unescape(found.group(1))
    return path


def pages(conn: http.client.HTTPConnection, recipient: str) -> list[tuple[str, str]]:
    """(label, path) of every page measured; ids found through the pages themselves."""
    oldest = first_id(page_of(conn, "/queue"))
    deep = deep_page(conn, DEEP_HOPS)
    return [
        ("overview", "/"),
        ("threads", "/threads"),
        ("queue, first page", "/queue"),
        ("queue, by connector and state", "/queue?connector=postoffice&state=queued"),
        ("queue, by recipient", f"/queue?recipient={quote(recipient)}"),
        ("queue, older than 1 min", "/queue?older_than=1"),
        (f"queue, page {DEEP_HOPS + 1} (keyset)", deep),
        ("one message", f"/queue/{oldest}"),
        ("events", "/events"),
        ("events, warning or worse", "/events?severity=warning"),
        ("track, by queue id", f"/track?key={oldest}"),
        ("track, by address", f"/track?key={quote(recipient)}"),
        ("/status", "/status"),
        ("/metrics", "/metrics"),
        ("/healthz", "/healthz"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailgate_options(p)
    p.add_argument("--queued", type=int, default=100_000, help="messages in the queue")
    p.add_argument("--rounds", type=int, default=20, help="fetches of each page")
    p.add_argument("--big-queue-size", type=int, default=500, help="bytes per message body")
    p.add_argument("--tmp-dir", default=None, help="where the run directory goes")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    args = p.parse_args()
    admin = free_port()
    config = CONFIG.replace('listen = ""', f'listen = "127.0.0.1:{admin}"')
    root = new_run_dir("dashboard-", args.tmp_dir, args.keep)
    mg = Mailgate(root, args.python, src=args.src, config=config, commit_stats=False)
    rows: list[tuple[str, float, float, float, int, int]] = []
    try:
        recipients = mg.add_mailboxes()
        mg.start()
        mg.set_paused("postoffice", True)
        print(f"filling {args.queued} messages", flush=True)
        fill(args, mg, args.queued, recipients)
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=120)
        for label, path in pages(conn, recipients[0]):
            get(conn, path)  # once to warm the caches, as a viewer's second look would
            times, status, size = [], 0, 0
            for _ in range(args.rounds):
                seconds, status, size = get(conn, path)
                times.append(seconds * 1000)
            times.sort()
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            rows.append((label, statistics.median(times), p90, times[-1], status, size))
            print(f"  {label}: {statistics.median(times):.1f} ms", flush=True)
        conn.close()
    except BenchError as exc:
        print(f"dashboard bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        mg.stop()
        remove_leftovers()
    print()
    print(f"`{command_text('dashboard.py', sys.argv[1:])}` at {git_describe()}, "
          f"{args.queued} messages queued ({NET}/{PO} mailboxes, connector paused), "
          f"{args.rounds} fetches per page over one keep-alive connection:\n")  # fmt: skip
    print("| page | median ms | p90 ms | worst ms | status | bytes |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, median, p90, worst, status, size in rows:
        print(f"| {label} | {median:.1f} | {p90:.1f} | {worst:.1f} | {status} | {size} |")
    over = [r[0] for r in rows if r[2] > GOAL_MS]
    print(f"\ngoal {GOAL_MS:.0f} ms (p90): " + ("met by every page" if not over else
          "missed by " + ", ".join(over)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
