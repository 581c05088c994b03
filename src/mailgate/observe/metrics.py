"""The metrics catalog: every metric mailgate exposes at /metrics, declared once.

Each metric has its exposed name (counters end in `_total`), a kind, a help text and
its labels. Stage metrics are counted by the stages themselves (observe/counters.py,
with these constants, so a name is never spelt twice); status metrics are read from
the status answer at scrape time (queues, threads, health). web/metrics.py builds the
exposition from this table, and docs/metrics.md is generated from it (`mailgate docs
--write`), so the three cannot drift apart. A declarative table: it may grow long.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailgate.observe import catalog

# Seconds; a delivery latency histogram's upper bounds (+Inf is implied).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)  # fmt: skip


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Source(enum.StrEnum):
    STAGE = "stage"  # counted by a stage (Counters), merged over the processes
    STATUS = "status"  # read from the status answer when scraped


@dataclass(frozen=True, slots=True)
class MetricType:
    name: str
    kind: Kind
    source: Source
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The family name prometheus_client wants: a counter's without `_total`."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name


METRICS: dict[str, MetricType] = {}


def _metric(
    name: str, kind: Kind, source: Source, help: str, labels: tuple[str, ...] = ()
) -> MetricType:
    if name in METRICS:
        raise ValueError(f"duplicate metric {name}")
    if (kind is Kind.COUNTER) != name.endswith("_total"):
        raise ValueError(f"{name}: counters, and only counters, end in _total")
    metric = MetricType(name, kind, source, help, labels)
    METRICS[name] = metric
    return metric


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
STAGE, STATUS = Source.STAGE, Source.STATUS

# --- the service ------------------------------------------------------------------------------
INFO = _metric("mailgate_info", G, STATUS, "The running version.", ("version",))
HEALTHY = _metric(
    "mailgate_healthy", G, STATUS, "1 if the service is healthy (see /healthz for why not)."
)
UPTIME = _metric("mailgate_uptime_seconds", G, STATUS, "Seconds since the service started.")
RESTARTS = _metric(
    "mailgate_restarts_total", C, STATUS, "Restarts of supervised threads and worker processes."
)
ABANDONED_THREADS = _metric(
    "mailgate_abandoned_threads_total", C, STATUS, "Stalled threads abandoned and replaced."
)
CONFIG_RELOAD_OK = _metric(
    "mailgate_config_last_reload_successful", G, STATUS,
    "1 if the last configuration reload was taken (0: refused, event 1100; the service runs "
    "on the configuration it had).",
)  # fmt: skip
CONFIG_RELOAD_TIME = _metric(
    "mailgate_config_last_reload_success_timestamp_seconds", G, STATUS,
    "When the configuration was last loaded (start or reload), as a Unix time.",
)  # fmt: skip
STALLED_THREADS = _metric(
    "mailgate_stalled_threads", G, STATUS, "Threads stalled right now (busy, no progress)."
)

# --- queues -----------------------------------------------------------------------------------
QUEUE_LENGTH = _metric(
    "mailgate_queue_length", G, STATUS, "Recipients waiting for a connector (every state).",
    ("connector",),
)  # fmt: skip
QUEUE_OLDEST_AGE = _metric(
    "mailgate_queue_oldest_age_seconds", G, STATUS,
    "Age of the oldest recipient waiting for a connector (0 when none waits).", ("connector",),
)  # fmt: skip
QUEUE_RECIPIENTS = _metric(
    "mailgate_queue_recipients", G, STATUS, "Recipients waiting for a connector, by state.",
    ("connector", "state"),
)  # fmt: skip
CONNECTOR_PAUSED = _metric(
    "mailgate_connector_paused", G, STATUS, "1 if delivery by the connector is paused.",
    ("connector",),
)  # fmt: skip
CONNECTOR_THREADS = _metric(
    "mailgate_connector_threads", G, STATUS, "Interchange threads of the connector.",
    ("connector",),
)  # fmt: skip
CONNECTOR_CONNECTIONS = _metric(
    "mailgate_connector_connections", G, STATUS,
    "Connections the connector has open to its destinations (smarthost, LMTP server, MX "
    "hosts), idle ones kept for reuse included.", ("connector",),
)  # fmt: skip
CONNECTOR_DOWN = _metric(
    "mailgate_connector_destination_down", G, STATUS,
    "1 while the connector's destination is marked down after a connection failure (new "
    "attempts deferred at once, events 2460/2480).", ("connector",),
)  # fmt: skip

# --- receive ----------------------------------------------------------------------------------
MESSAGES_RECEIVED = _metric(
    "mailgate_messages_received_total", C, STAGE, "Messages accepted and queued, by source.",
    ("source",),
)  # fmt: skip
BYTES_RECEIVED = _metric(
    "mailgate_bytes_received_total", C, STAGE,
    "Bytes of the messages accepted and queued, by source.", ("source",),
)  # fmt: skip
SMTP_COMMITS = _metric(
    "mailgate_smtp_commits_total", C, STAGE,
    "Messages accepted over SMTP, by how they were committed: inline (in the session's own "
    "thread: nobody to share a flush with, [smtp] inline_commit_sessions), inline-unlocked "
    "(the same, flushed after the writer lock was released, as other writers contended "
    "for it) or group (the group commit).", ("path",),
)  # fmt: skip
SMTP_LINGERS = _metric(
    "mailgate_smtp_lingers_total", C, STAGE,
    "Waits awake after a reply of the instance's only SMTP session ([smtp] reply_linger), by "
    "how they ended: bytes (the client's next command, or its hangup, came) or bound (the "
    "time ran out and the session's thread went back to sleeping).", ("outcome",),
)  # fmt: skip
SMTP_SESSIONS = _metric("mailgate_smtp_sessions_total", C, STAGE, "SMTP sessions accepted.")
SMTP_SESSIONS_OPEN = _metric("mailgate_smtp_sessions_open", G, STAGE, "SMTP sessions open now.")
SMTP_SESSIONS_REFUSED = _metric(
    "mailgate_smtp_sessions_refused_total", C, STAGE,
    f"SMTP sessions refused at connect (421 4.7.0, event {catalog.SESSION_REFUSED.id}: [smtp] "
    "max_sessions or max_sessions_per_ip).",
)  # fmt: skip
SMTP_AUTH_FAILURES = _metric(
    "mailgate_smtp_auth_failures_total", C, STAGE,
    f"AUTH attempts refused (event {catalog.AUTH_FAILED.id}).",
)  # fmt: skip
SMTP_RECIPIENTS_REJECTED = _metric(
    "mailgate_smtp_recipients_rejected_total", C, STAGE, "RCPT TO commands refused."
)
MESSAGES_REFUSED = _metric(
    "mailgate_messages_refused_total", C, STAGE,
    "Messages refused after DATA (nothing was queued).",
)  # fmt: skip

# --- delivery ---------------------------------------------------------------------------------
ATTEMPTS = _metric(
    "mailgate_attempts_total", C, STAGE, "Delivery attempts recorded, by connector and outcome.",
    ("connector", "outcome"),
)  # fmt: skip
DELIVERED = _metric(
    "mailgate_delivered_total", C, STATUS, "Recipients delivered.",
    ("connector",),
)  # fmt: skip
DEFERRED = _metric(
    "mailgate_deferred_total", C, STATUS,
    "Delivery attempts that failed temporarily (the recipient is retried).", ("connector",),
)  # fmt: skip
BOUNCED = _metric(
    "mailgate_bounced_total", C, STATUS,
    "Recipients that failed permanently (a bounce is sent).", ("connector",),
)  # fmt: skip
DELIVERY_LATENCY = _metric(
    "mailgate_delivery_latency_seconds", H, STAGE,
    "Seconds from receipt to delivery of each delivered recipient.", ("connector",),
)  # fmt: skip
EXPIRED = _metric(
    "mailgate_expired_total", C, STAGE,
    "Waiting recipients the scheduler bounced for outliving [queue] max_lifetime.",
    ("connector",),
)  # fmt: skip
REROUTED = _metric(
    "mailgate_rerouted_total", C, STAGE,
    "Waiting recipients of a connector the configuration no longer has: routed again, or "
    "bounced (outcome).", ("connector", "outcome"),
)  # fmt: skip
POSTOFFICE_QUOTA_SCANS = _metric(
    "mailgate_postoffice_quota_scans_total", C, STAGE,
    "Mailboxes listed to rebuild their size (maildirsize) for [postoffice] quota; rare once "
    "each mailbox has its file.",
)  # fmt: skip

# --- threads ----------------------------------------------------------------------------------
THREAD_CPU = _metric(
    "mailgate_thread_cpu_seconds_total", C, STATUS,
    "CPU seconds used by each supervised thread (this life).", ("process", "thread"),
)  # fmt: skip
THREAD_STATE = _metric(
    "mailgate_thread_state", G, STATUS,
    "The state of each supervised thread (1 for its current state).",
    ("process", "thread", "state"),
)  # fmt: skip

# --- nodes sharing the queue (issue 13) --------------------------------------------------------
NODE_UP = _metric(
    "mailgate_node_up", G, STATUS,
    "Each node sharing the queue: 1 while it heart-beats, 0 once dead or stopped.",
    ("node", "state"),
)  # fmt: skip
NODE_HEARTBEAT_AGE = _metric(
    "mailgate_node_heartbeat_age_seconds", G, STATUS,
    "Seconds since each node's last heart-beat, by the store's clock.", ("node",),
)  # fmt: skip
NODE_WAKEUPS = _metric(
    "mailgate_node_wakeups_total", C, STAGE,
    "Wake-ups this node sent to the other nodes (NOTIFY) and heard from them.", ("direction",),
)  # fmt: skip
NODE_BUSY_THREADS = _metric(
    "mailgate_node_busy_threads", G, STATUS,
    "Threads of each node working on a message, as its last heart-beat said.", ("node",),
)  # fmt: skip

# Label values always exposed (with zeros), so a series never appears with the traffic.
SOURCES = ("smtp", "pickup")
OUTCOMES = ("delivered", "deferred", "bounced", "quarantined")
