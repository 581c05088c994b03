"""The event catalog: every event mailgate writes, with its numeric ID.

Each event has an ID, a category, a severity, the diagnostic level at which it is
written (an event is written when its level is at or below its category's
setting; errors and critical events are always written), a message template,
what it means and what the administrator should do. IDs of the Microsoft Mail
Connector are kept where the meaning is the same (2448 Sent, 2375 no such
mailbox, 2380 thread exception, 10003 thread failed fatally, ...).
docs/events.md is generated from this module (`mailgate docs --write`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Level(enum.IntEnum):
    NONE = 0
    MINIMUM = 1
    MEDIUM = 2
    MAXIMUM = 3


class Category(enum.StrEnum):
    SERVICE = "Service"
    CONFIG = "Config"
    RECEIVE = "Receive"
    ROUTING = "Routing"
    QUEUE = "Queue"
    INTERCHANGE = "Interchange"
    SENT = "Sent"
    NDR = "NDR"
    SUPERVISION = "Supervision"
    POSTOFFICE = "Postoffice"
    CONTROL = "Control"


DEFAULT_LEVELS: dict[Category, Level] = {c: Level.MEDIUM for c in Category} | {
    Category.SENT: Level.MAXIMUM
}


@dataclass(frozen=True, slots=True)
class EventType:
    id: int
    name: str
    category: Category
    severity: Severity
    level: Level
    template: str
    meaning: str
    action: str


CATALOG: dict[int, EventType] = {}


def _event(
    id: int,
    name: str,
    category: Category,
    severity: Severity,
    level: Level,
    template: str,
    meaning: str,
    action: str,
) -> EventType:
    if id in CATALOG:
        raise ValueError(f"duplicate event id {id}")
    event = EventType(id, name, category, severity, level, template, meaning, action)
    CATALOG[id] = event
    return event


S, C = Severity, Category
MIN, MED, MAX = Level.MINIMUM, Level.MEDIUM, Level.MAXIMUM

# --- Service -------------------------------------------------------------------------------------
SERVICE_STARTED = _event(
    1000, "ServiceStarted", C.SERVICE, S.INFO, MIN,
    "mailgate {version} started (pid {pid}); data in {data_dir}; SMTP on {listen}",
    "The service started and accepts mail.",
    "None.",
)  # fmt: skip
SERVICE_STOPPED = _event(
    1001, "ServiceStopped", C.SERVICE, S.INFO, MIN,
    "mailgate stopped: {reason}",
    "The service stopped cleanly; the reason names what asked it to stop.",
    "None, unless the stop was not asked for.",
)  # fmt: skip
SERVICE_FAILED = _event(
    1002, "ServiceFailed", C.SERVICE, S.CRITICAL, MIN,
    "mailgate is exiting after a failure: {reason}",
    "The service cannot go on and exits with a non-zero status so that its service "
    "manager restarts it.",
    "Read the events before this one for the cause; fix it and start the service.",
)  # fmt: skip
ALREADY_RUNNING = _event(
    1003, "AlreadyRunning", C.SERVICE, S.ERROR, MIN,
    "mailgate is already running on {data_dir} (pid {pid}); this one will not start",
    "A second service was started on a data directory that another one holds.",
    "Stop the running one first, or give this one another --data-dir.",
)  # fmt: skip
STORE_IN_USE = _event(
    1030, "StoreInUse", C.SERVICE, S.ERROR, MIN,
    "the queue {store} is in use by mailgate pid {pid} on {holder_data_dir}; this one "
    "(on {data_dir}) will not start",
    "A second service was started on a queue store that another one, with another data "
    "directory, holds. Two services on one store would take each other's work for that "
    "of a dead process and deliver it twice, so the second is refused.",
    "Give each service its own [queue] path, or stop the one named first.",
)  # fmt: skip
PORT_IN_USE = _event(
    1020, "PortInUse", C.SERVICE, S.ERROR, MIN,
    "port {listen} is already in use by {holder}; this mailgate will not start",
    "Another process listens on a port this service is configured to own (smtp.listen or "
    "smtp.implicit_tls_listen), often a mailgate on another data directory. A port belongs "
    "to one instance: its master opens it and its receive workers share that one socket, "
    "so a second instance can neither join it nor take part of the mail.",
    "Stop the process named (`ss -ltnp 'sport = :PORT'` shows it too), or give this "
    "instance another port (`--listen`, smtp.listen, smtp.implicit_tls_listen).",
)  # fmt: skip
STOP_INCOMPLETE = _event(
    1005, "StopIncomplete", C.SERVICE, S.ERROR, MIN,
    "stop deadline of {timeout}s passed; threads still running: {threads}",
    "The service exits although some threads did not finish in time. Work they held "
    "is released by lease expiry and retried; nothing accepted is lost.",
    "Look at the named threads' last events; a hung destination is the usual cause.",
)  # fmt: skip
UNHANDLED_EXCEPTION = _event(
    1006, "UnhandledException", C.SERVICE, S.CRITICAL, MIN,
    "unhandled exception in {where}: {error}\n{traceback}",
    "An exception escaped every handler; the service exits rather than run in an "
    "unknown state.",
    "Report it with the traceback; the service manager restarts the service.",
)  # fmt: skip
EVENTS_LOST = _event(
    1010, "EventsLost", C.SERVICE, S.WARNING, MIN,
    "event store {path} lost {count} event(s) ({total} since start): {reason}",
    "Events did not reach the queryable event store (used by `mailgate events` and "
    "`mailgate track`): its in-memory queue was full because the disk was slower than the "
    "events came, or writing failed. Mail is not affected, and events.jsonl still has "
    "every event.",
    "If it repeats, check the disk holding the log directory; a write failure names its cause.",
)  # fmt: skip

# --- Config --------------------------------------------------------------------------------------
CONFIG_INVALID = _event(
    1100, "ConfigInvalid", C.CONFIG, S.ERROR, MIN,
    "configuration {source} is invalid: {problems}",
    "The configuration file cannot be used: bytes that are not UTF-8 or not TOML (the "
    "line and column are named), unknown keys, wrong types or impossible values. The "
    "service refuses to start with it; a reload (SIGHUP, `ctl reload`) keeps the running "
    "configuration.",
    "Fix the file where named (a position or a dotted key) and check it with "
    "`mailgate check-config FILE`, which reports the same problems; then reload.",
)  # fmt: skip

CONFIG_RELOADED = _event(
    1101, "ConfigReloaded", C.CONFIG, S.INFO, MIN,
    "configuration reloaded: {routes} route(s) in force; changes needing a restart: "
    "{restart_needed}",
    "The configuration was re-read (SIGHUP, `mailgate ctl reload` or [supervise] "
    "refresh_every): routes, relay networks and log levels changed at once.",
    "Restart the service if the event names sections that need a restart.",
)  # fmt: skip

# --- Receive -------------------------------------------------------------------------------------
MESSAGE_RECEIVED = _event(
    3000, "MessageReceived", C.RECEIVE, S.INFO, MED,
    "{queue_id}: received from {client} <{sender}> for {recipients} recipient(s), "
    "{size} bytes, message-id {message_id}",
    "A message is durable in the queue and the client was told 250.",
    "None.",
)  # fmt: skip
STORE_FAILED_RECEIVE = _event(
    3001, "ReceiveStoreFailed", C.RECEIVE, S.ERROR, MIN,
    "could not make a message from {client} <{sender}> durable: {error}; answered {reply}",
    "The queue failed while storing a message; the client was told to retry later "
    "(4xx) and nothing of the message was kept.",
    "Check disk space and the queue store (`mailgate queue check` when available).",
)  # fmt: skip
INVALID_RECIPIENT = _event(
    2371, "InvalidRecipient", C.RECEIVE, S.INFO, MED,
    "refused recipient <{recipient}> from {client}: {reply}",
    "A recipient was refused at RCPT time: no such postoffice mailbox or a malformed "
    "address. The client gets a 5xx and keeps the message.",
    "None, unless the mailbox should exist: create it with `mailgate mailbox add`.",
)  # fmt: skip
RELAY_DENIED = _event(
    3002, "RelayDenied", C.ROUTING, S.WARNING, MIN,
    "relay denied for <{recipient}> from {client}: no route serves its domain",
    "A client asked for a recipient that no local route serves and is not allowed to relay.",
    "None if the client is not yours; otherwise add a route or its network to relay_networks.",
)  # fmt: skip
MESSAGE_REFUSED = _event(
    3003, "MessageRefused", C.RECEIVE, S.WARNING, MIN,
    "refused message from {client} <{sender}>: {reply}",
    "Message content broke a protocol rule (bare CR or LF, NUL, 8-bit headers without "
    "SMTPUTF8, size); the client got a 5xx and nothing was queued.",
    "None; the sending software must be fixed to send valid mail.",
)  # fmt: skip
SESSION_ERROR = _event(
    3004, "SessionError", C.RECEIVE, S.ERROR, MIN,
    "unexpected error in SMTP session with {client}: {error}\n{traceback}",
    "A bug or an unexpected condition in a session; the client got a 4xx, the service "
    "goes on serving.",
    "Report it with the traceback.",
)  # fmt: skip

SESSION_REFUSED = _event(
    3010, "SessionRefused", C.RECEIVE, S.WARNING, MED,
    "refused a session from {client}: {reply}",
    "A client was over the limit of concurrent sessions (in total, or from its address); "
    "it was told 421 and disconnected.",
    "None if it is a flood; raise [smtp] max_sessions or max_sessions_per_ip for a busy "
    "legitimate client.",
)  # fmt: skip
SESSION_CLOSED = _event(
    3011, "SessionClosed", C.RECEIVE, S.WARNING, MED,
    "closed the session with {client}: {why}",
    "A client made too many errors or sent too many commands in one session; it was told "
    "421 and disconnected.",
    "None; a probing or looping client. Look at it if it is one of yours.",
)  # fmt: skip
AUTH_FAILED = _event(
    3012, "AuthFailed", C.RECEIVE, S.WARNING, MIN,
    "authentication as {user} from {client} failed: {why}",
    "A client gave wrong credentials, or was refused after too many failures "
    "([smtp] auth_failures within auth_window). The password is never logged.",
    "Repeated failures from one address are password guessing: block the address.",
)  # fmt: skip
AUTH_SUCCEEDED = _event(
    3013, "AuthSucceeded", C.RECEIVE, S.INFO, MED,
    "{client} authenticated as {user}",
    "A client authenticated; it may now relay.",
    "None.",
)  # fmt: skip

# --- Long lines ----------------------------------------------------------------------------------
LINES_BROKEN = _event(
    3020, "LinesBroken", C.INTERCHANGE, S.INFO, MED,
    "{queue_id}: lines longer than {limit} octets broken with CRLF SPACE for {host}",
    "The message has lines longer than SMTP allows (1,000 octets with the CRLF); mailgate "
    "accepted them ([smtp] max_line_length) and broke them for the peer, as Postfix's "
    "smtp_line_length_limit does. Mailboxes get them intact. A DKIM signature over such a "
    "line no longer verifies at the peer.",
    "None; if the signature matters, the sender should encode long lines (quoted-printable "
    "or base64).",
)  # fmt: skip

# --- Queue ---------------------------------------------------------------------------------------
LEASES_RELEASED = _event(
    4000, "LeasesReleased", C.QUEUE, S.WARNING, MIN,
    "released {count} lease(s) {why}; their recipients will be retried",
    "Recipients held by a thread or process that ended without recording an outcome "
    "were put back in the queue; postoffice delivery checks for an earlier copy first. "
    "Each such attempt counts as an internal failure of its recipient (not at a start "
    "after a clean stop): at [queue] max_internal_failures it is quarantined (2446), past "
    "[queue] max_lifetime it is bounced (2401).",
    "None; frequent releases point at crashes or stalls worth looking into.",
)  # fmt: skip
STORE_ERROR = _event(
    4001, "StoreError", C.QUEUE, S.ERROR, MIN,
    "queue store error in {operation}: {error}",
    "A queue operation failed; it is retried, and callers waiting on it get a "
    "temporary failure.",
    "Check disk space and the queue file; repeated errors need attention.",
)  # fmt: skip
LEASE_LOST = _event(
    4002, "LeaseLost", C.QUEUE, S.WARNING, MIN,
    "{queue_id}: lease on <{recipient}> was lost before its outcome ({outcome}) was recorded",
    "A thread took longer than the lease, and another thread may have retried the "
    "recipient; or an administrator's command took the recipient from the thread (event "
    "4020). Postoffice delivery does not duplicate; a smarthost may see the message twice "
    "after an expired lease.",
    "Raise [queue] lease, or look for a slow destination.",
)  # fmt: skip
MESSAGE_DONE = _event(
    4003, "MessageDone", C.QUEUE, S.INFO, MAX,
    "{queue_id}: every recipient reached a final state; body removed",
    "All recipients of the message were delivered or bounced.",
    "None.",
)  # fmt: skip
MESSAGES_PURGED = _event(
    4004, "MessagesPurged", C.QUEUE, S.INFO, MED,
    "purged {count} finished message(s) older than {age}",
    "Records of finished messages past [queue] keep_done were removed.",
    "None.",
)  # fmt: skip
QUEUE_EFFECT_FAILED = _event(
    4050, "QueueEffectFailed", C.QUEUE, S.ERROR, MIN,
    "what the {operation} commit owed afterwards failed: {error}\n{traceback}",
    "A wake-up or a report's event that a queue commit owed raised (a bug). The commit "
    "itself stands and the thread that made it goes on: due work is still found by the "
    "scheduler within a second, but an NDR event (2117-2121) may be missing.",
    "Report the traceback.",
)  # fmt: skip

MESSAGE_HELD = _event(
    4010, "MessageHeld", C.QUEUE, S.INFO, MIN,
    "{scope}: {count} recipient(s) held by the administrator",
    "`mailgate queue hold` set waiting recipients aside: no thread delivers them until "
    "they are released. For one message, a recipient being delivered at that moment is "
    "held too (event 4020 says what became of the attempt); `hold --all` leaves such "
    "recipients alone and counts them.",
    "Release them with `mailgate queue release` (or delete or bounce them).",
)  # fmt: skip
MESSAGE_RELEASED = _event(
    4011, "MessageReleased", C.QUEUE, S.INFO, MIN,
    "{scope}: {count} recipient(s) released by the administrator",
    "`mailgate queue release` put held (or, for one message, quarantined) recipients "
    "back in the queue, due at once.",
    "None.",
)  # fmt: skip
MESSAGE_DELETED = _event(
    4012, "MessageDeleted", C.QUEUE, S.WARNING, MIN,
    "{queue_id}: deleted by the administrator with {open} recipient(s) not yet final; "
    "report to the sender: {report}",
    "`mailgate queue delete` removed a message and everything the queue knew of it. With "
    "--ndr its open recipients were bounced first and a report queued to the sender.",
    "None.",
)  # fmt: skip
MESSAGE_RETURNED = _event(
    4013, "MessageReturned", C.QUEUE, S.WARNING, MIN,
    "{queue_id}: returned to the sender by the administrator; {count} recipient(s) "
    "bounced; report: {report}",
    "`mailgate queue bounce` ended every open recipient as bounced (554 5.7.0) and "
    "queued a non-delivery report to the sender.",
    "None.",
)  # fmt: skip
QUEUE_RETRIED = _event(
    4014, "QueueRetried", C.QUEUE, S.INFO, MIN,
    "{scope}: {count} recipient(s) made due now by the administrator",
    "`mailgate queue retry` made queued and deferred recipients due at once; delivery "
    "tries them now instead of waiting for their next retry time.",
    "None.",
)  # fmt: skip
RECIPIENTS_REROUTED = _event(
    4040, "RecipientsRerouted", C.QUEUE, S.WARNING, MIN,
    "connector {connector} is no longer configured: {rerouted} waiting recipient(s) "
    "routed again ({moved}), {bounced} bounced",
    "Mail was waiting for a connector the configuration (after a restart or a reload) no "
    "longer has, so no thread would ever deliver it. Each recipient was routed again by "
    "the current rules, or, when no rule routes it, bounced (554 5.4.4) with a report to "
    "its sender (events 2401, 2117). Held and quarantined recipients are handled once "
    "released.",
    "None if the connector was removed on purpose; otherwise restore its configuration "
    "(for instance `--smarthost`) before more mail bounces.",
)  # fmt: skip

LEASE_REVOKED = _event(
    4020, "LeaseRevoked", C.QUEUE, S.WARNING, MIN,
    "{queue_id}: `mailgate queue {command}` took <{recipient}> from {thread}, which was "
    "delivering it; {fate_text}",
    "An administrator's command on a message being delivered took effect at once: the "
    "thread's lease was revoked and its attempt cancelled, or its outcome discarded when it "
    "returns. `fate` is cancelled, delivered (the attempt had already delivered it, which "
    "the queue records, so it is never sent again), ended (the attempt ended otherwise "
    "and its outcome was discarded), running (still running when the command gave up "
    "waiting; a delivery it completes is still recorded as delivered) or orphaned (no "
    "service runs to hold the lease).",
    "None; for fate delivered, the message reached its destination.",
)  # fmt: skip

QUEUE_SCHEMA_UPGRADED = _event(
    4060, "QueueSchemaUpgraded", C.QUEUE, S.INFO, MIN,
    "the queue {store} was upgraded from schema {old} to {new} by `mailgate db upgrade`",
    "The queue's tables were created or brought to the schema this mailgate needs, in one "
    "transaction (docs/nodes.md). A SQLite file is also upgraded in place at start; a "
    "PostgreSQL store only by this command.",
    "None. With several nodes on one PostgreSQL store, start the new mailgate on each of "
    "them now.",
)  # fmt: skip
QUEUE_MOVED = _event(
    4061, "QueueMoved", C.QUEUE, S.INFO, MIN,
    "the queue {source} was moved into {target}: {messages} messages ({open} open), "
    "{recipients} recipients, {attempts} attempts, {leases} lease(s) given back",
    "`mailgate db migrate-from-sqlite` copied a single node's SQLite queue into the "
    "PostgreSQL store in one transaction and marked the file moved, so no service starts "
    "on it again.",
    "Run that node with the PostgreSQL [queue] url from now on.",
)  # fmt: skip

# --- Nodes sharing one queue (issue 13) ----------------------------------------------------------
NODE_NAME_IN_USE = _event(
    1040, "NodeNameInUse", C.SERVICE, S.ERROR, MIN,
    "node {node} is already alive in the queue {store} (host {host}, pid {pid}, data "
    "{holder_data_dir}, heard from {age}s ago); this one will not start",
    "Two live nodes may not share one name: leases, heart-beats and the release of a dead "
    "node's work are all by name. The other node's heart-beat is fresher than "
    "[queue] node_timeout.",
    "Give this node its own `[service] node`, or stop the other one first.",
)  # fmt: skip
NODE_JOINED = _event(
    1041, "NodeJoined", C.SERVICE, S.INFO, MIN,
    "node {node} joined the queue {store} ({alive} node(s) alive: {nodes})",
    "This node registered itself in the shared queue and heart-beats into it from now on.",
    "None.",
)  # fmt: skip
NODE_DEAD = _event(
    1042, "NodeDead", C.SERVICE, S.WARNING, MIN,
    "node {node} (host {host}, pid {pid}) not heard from for {silent}s (node_timeout "
    "{timeout}s): declared dead by {by}; {released} of its lease(s) released here",
    "A node stopped heart-beating without leaving: it crashed, hangs, or lost the "
    "database. Each live node says so once; the first to see it releases its leases at "
    "once, so its recipients are delivered by the others (postoffice delivery is "
    "idempotent, so one it had delivered is not duplicated).",
    "Find out why that node stopped; when it starts again it rejoins under its name.",
)  # fmt: skip
NODE_REJOINED = _event(
    1043, "NodeRejoined", C.SERVICE, S.WARNING, MIN,
    "node {node} was declared dead by the others (silent for {silent}s) and heart-beats "
    "again; the leases it held were released",
    "This node could not reach the queue (or was paused) for longer than [queue] "
    "node_timeout. Its deliveries in flight finish; outcomes whose lease was released are "
    "settled as late deliveries where they were delivered.",
    "Look at event 4001 around it: the database, or this node's link to it.",
)  # fmt: skip
NODE_TAKEN = _event(
    1044, "NodeTaken", C.SERVICE, S.CRITICAL, MIN,
    "node {node}'s entry in the queue was taken by another mailgate (host {host}, pid "
    "{pid}) while this one was silent; this one stops",
    "Another node started under this name after this one had been declared dead. Two live "
    "nodes with one name would release each other's work, so this one stops.",
    "Give one of them another `[service] node`.",
)  # fmt: skip
# --- A big queue (issue 14.6, w-bigq: 1056-1059) -------------------------------------------------
CLEAN_STOP_NOT_RECORDED = _event(
    1056, "CleanStopNotRecorded", C.SERVICE, S.WARNING, MIN,
    "could not {what} the record of the queue file's clean stop ({path}): {error}",
    "A clean stop records the queue file's identity so that the next start can skip "
    "reading every page of an unchanged file ([queue] check_at_start). Writing it at a "
    "stop, or removing it at a start, failed: the next start checks every page (slower "
    "with a big queue, never less safe).",
    "Check the permissions and free space of the queue directory.",
)  # fmt: skip
NODE_HEARTBEAT_FAILED = _event(
    4080, "NodeHeartbeatFailed", C.QUEUE, S.WARNING, MIN,
    "node {node} could not heart-beat into the queue: {error}",
    "The heart-beat (every fifth of [queue] node_timeout) failed; if it keeps failing "
    "past node_timeout the other nodes declare this one dead and take its work.",
    "Check the database and this node's connection to it (event 4001).",
)  # fmt: skip

# --- Interchange ---------------------------------------------------------------------------------
ATTEMPT_CANCELLED = _event(
    2463, "AttemptCancelled", C.INTERCHANGE, S.INFO, MIN,
    "{thread}: cancelling its attempt on {queue_id} ({how}): an administrator's command "
    "revoked its lease",
    "`mailgate queue hold|delete|bounce` asked the running service to stop delivering a "
    "message whose lease it revoked. A smarthost connection is broken (unless the message "
    "is being handed over with DATA: then it finishes, as breaking it could make the "
    "smarthost deliver it twice); a postoffice delivery stops before its next write into "
    "a mailbox; a message not yet started in the thread's batch is skipped.",
    "None.",
)  # fmt: skip
SENT = _event(
    2448, "Sent", C.SENT, S.INFO, MAX,
    "{queue_id}: delivered to <{recipient}> via {connector}: {reply} "
    "(delays={delays}, attempts={attempts})",
    "One recipient was delivered. When these stop while mail is queued, a connector is stuck.",
    "None.",
)  # fmt: skip
DEFERRED = _event(
    2400, "Deferred", C.INTERCHANGE, S.WARNING, MED,
    "{queue_id}: delivery to <{recipient}> via {connector} deferred: {reply}; "
    "next attempt in {retry_in}",
    "A temporary failure; the recipient stays queued and is retried with backoff until "
    "[queue] max_lifetime.",
    "None, unless it repeats: then look at the destination named in the reply.",
)  # fmt: skip
BOUNCED = _event(
    2401, "Bounced", C.INTERCHANGE, S.WARNING, MIN,
    "{queue_id}: delivery to <{recipient}> via {connector} failed permanently: {reply}",
    "A permanent failure (or the maximum lifetime passed); the recipient will not be retried.",
    "None; the sender is told. Check the reply if many recipients fail this way.",
)  # fmt: skip
NO_SUCH_MAILBOX = _event(
    2375, "NoSuchMailbox", C.POSTOFFICE, S.WARNING, MIN,
    "{queue_id}: no mailbox {mailbox} for <{recipient}>",
    "A message reached the postoffice for a mailbox that does not exist (it was removed "
    "after the message was accepted, or is not a real directory). Permanent failure.",
    "Create the mailbox with `mailgate mailbox add` if it should exist.",
)  # fmt: skip
MAILBOX_UNAVAILABLE = _event(
    2376, "MailboxUnavailable", C.POSTOFFICE, S.WARNING, MIN,
    "{queue_id}: mailbox {mailbox} cannot take mail now: {error}; deferred",
    "Delivery to an existing mailbox failed for a reason that may pass (disk full, "
    "quota, I/O error). The message is deferred, not bounced.",
    "Free space or raise the quota; mail flows again on the next retry.",
)  # fmt: skip
THREAD_EXCEPTION = _event(
    2380, "ThreadException", C.SUPERVISION, S.ERROR, MIN,
    "thread {thread} ({role}) raised {error}; restart {restarts} in {backoff}s\n{traceback}",
    "A supervised thread died with an exception; it is restarted with a fresh context "
    "after a back-off.",
    "Report the traceback; repeated restarts end in event 10003.",
)  # fmt: skip
PROCESSING_FAILED = _event(
    2450, "MessageProcessingFailed", C.INTERCHANGE, S.ERROR, MIN,
    "{queue_id}: internal error delivering to <{recipient}> via {connector} "
    "(failure {failures} of {limit}): {error}\n{traceback}",
    "Delivery raised an unexpected error; the recipient is retried, and quarantined "
    "after [queue] max_internal_failures such errors.",
    "Report the traceback.",
)  # fmt: skip
QUARANTINED = _event(
    2446, "MessageQuarantined", C.INTERCHANGE, S.ERROR, MIN,
    "{queue_id}: recipient <{recipient}> quarantined after {failures} internal failures",
    "A poison message: it failed by internal error, or its attempts ended without an "
    "outcome (a delivery that hangs or kills its worker), too often; it is set aside so it "
    "cannot block other mail. It is kept, not lost.",
    "Inspect the message; delete, bounce or release it with the queue commands.",
)  # fmt: skip

# --- NDR -----------------------------------------------------------------------------------------
NDR_GENERATED = _event(
    2117, "NdrGenerated", C.NDR, S.INFO, MIN,
    "{queue_id}: non-delivery report {bounce_id} ({kind}) queued to <{recipient}> for "
    "{failed}",
    "Recipients of a message failed permanently (or expired); an RFC 3464 report naming "
    "them was queued to the sender (or, for a bounce that failed, to the postmaster).",
    "None; check the failed recipients' replies if many bounce.",
)  # fmt: skip
NDR_DELAYED = _event(
    2119, "DelayWarning", C.NDR, S.INFO, MED,
    "{queue_id}: delay warning {bounce_id} queued to <{recipient}> for {failed}",
    "A message has waited longer than [dsn] delay_warning; its sender was told once that "
    "delivery is still being retried.",
    "None; look at the destinations if many messages wait this long.",
)  # fmt: skip
NDR_DROPPED = _event(
    2118, "NdrDropped", C.NDR, S.WARNING, MIN,
    "{queue_id}: no non-delivery report for {failed}: {reason}",
    "A report was owed but none was sent: the sender is the null sender (the message was "
    "itself a bounce), a double bounce to the postmaster failed, or no route reaches the "
    "postmaster.",
    "Make sure [dsn] postmaster is a deliverable address.",
)  # fmt: skip

NDR_FAILED = _event(
    2120, "NdrFailed", C.NDR, S.ERROR, MIN,
    "{queue_id}: the non-delivery report for {failed} could not be built: {error}; the "
    "message is kept and those recipients quarantined",
    "Building a report raised (a bug). The outcome of the delivery attempt was still "
    "recorded (nothing is delivered again), but the report the sender is owed was not "
    "queued: the message is kept, its bounced recipients quarantined, so the notification "
    "is not lost.",
    "Report the error. Once it is fixed, `mailgate queue bounce ID` sends the report; "
    "`mailgate queue delete ID` drops the message.",
)  # fmt: skip
DELAY_WARNING_FAILED = _event(
    2121, "DelayWarningFailed", C.NDR, S.WARNING, MIN,
    "{queue_id}: the delay warning could not be built: {error}; none will be sent",
    "Building a delay warning raised (a bug). The message is still retried as before; "
    "its sender just gets no warning.",
    "Report the error.",
)  # fmt: skip

# --- Pickup --------------------------------------------------------------------------------------
PICKED_UP = _event(
    2444, "PickedUp", C.RECEIVE, S.INFO, MED,
    "{queue_id}: picked up {file} from {outbox}: <{sender}> for {recipients} recipient(s), "
    "{size} bytes",
    "A file dropped in a postoffice outbox is durable in the queue; the file was removed.",
    "None.",
)  # fmt: skip
PICKUP_BADMAIL = _event(
    2445, "PickupBadmail", C.RECEIVE, S.WARNING, MIN,
    "could not take {file} from {outbox}: {reason}; moved to {badmail}",
    "A file in an outbox is not a message mailgate can send (no sender, no recipients, "
    "unreadable); it was moved to the badmail directory beside a .reason file. Nothing "
    "was sent.",
    "Fix the program that wrote it; resubmit the corrected file to the outbox.",
)  # fmt: skip
PICKUP_ERROR = _event(
    2447, "PickupError", C.RECEIVE, S.ERROR, MIN,
    "pickup of {file} from {outbox} failed: {error}; it stays in place and is retried",
    "A file could not be queued for a reason that may pass (the queue failed, a disk "
    "error); it is left where it is and taken again on a later scan.",
    "Check the queue's events around this one.",
)  # fmt: skip

# --- Smarthost -----------------------------------------------------------------------------------
SMARTHOST_FAILED = _event(
    2460, "SmarthostUnreachable", C.INTERCHANGE, S.WARNING, MIN,
    "smarthost {host}:{port} ({connector}) unreachable: {error}; new attempts deferred for "
    "{down_for}s",
    "The connection to the smarthost failed. Its recipients are deferred, and for a "
    "while new ones are deferred at once instead of hammering a dead host.",
    "Check that the smarthost is up and reachable from this host.",
)  # fmt: skip
SMARTHOST_DOWN_CLEARED = _event(
    2462, "SmarthostDownCleared", C.INTERCHANGE, S.INFO, MIN,
    "smarthost {host}:{port} ({connector}) no longer treated as down ({by}); it was down "
    "after: {error}",
    "An administrator asked for delivery now (`mailgate queue retry`, `mailgate ctl wake`): "
    "the connector forgot that the smarthost was unreachable, so the next attempts go to "
    "it at once instead of being deferred for the rest of [smarthost] down_for.",
    "None; if the smarthost is still down, the next attempt says so (event 2460).",
)  # fmt: skip
SMARTHOST_RECOVERED = _event(
    2461, "SmarthostRecovered", C.INTERCHANGE, S.INFO, MIN,
    "smarthost {host}:{port} ({connector}) reachable again",
    "A connection to a smarthost previously marked unreachable succeeded.",
    "None.",
)  # fmt: skip

# --- LMTP and direct (MX) delivery ---------------------------------------------------------------
LMTP_FAILED = _event(
    2480, "LmtpUnreachable", C.INTERCHANGE, S.WARNING, MIN,
    "LMTP server {address} ({connector}) unreachable: {error}; new attempts deferred for "
    "{down_for}s",
    "The connection to the LMTP server (Dovecot, Cyrus) failed, or it went away during a "
    "transaction. Its recipients are deferred, and for a while new ones are deferred at "
    "once instead of hammering a dead server.",
    "Check that the LMTP server runs and listens on that address or socket, and that "
    "mailgate may connect to it (a Unix socket's mode and owner).",
)  # fmt: skip
LMTP_RECOVERED = _event(
    2481, "LmtpRecovered", C.INTERCHANGE, S.INFO, MIN,
    "LMTP server {address} ({connector}) reachable again",
    "A connection to an LMTP server previously marked unreachable succeeded.",
    "None.",
)  # fmt: skip
LMTP_DOWN_CLEARED = _event(
    2482, "LmtpDownCleared", C.INTERCHANGE, S.INFO, MIN,
    "LMTP server {address} ({connector}) no longer treated as down ({by}); it was down "
    "after: {error}",
    "An administrator asked for delivery now: the connector forgot that the LMTP server "
    "was unreachable, so the next attempts go to it at once.",
    "None; if the server is still down, the next attempt says so (event 2480).",
)  # fmt: skip
MX_LOOKUP_FAILED = _event(
    2483, "MxLookupFailed", C.INTERCHANGE, S.WARNING, MIN,
    "{queue_id}: DNS lookup of the mail hosts of {domain} failed: {error}; {count} "
    "recipient(s) deferred",
    "The resolver did not answer, or answered SERVFAIL, for the domain's MX records or "
    "its mail hosts' addresses. That may pass: the recipients are retried.",
    "Check the resolver ([dns] nameservers, or /etc/resolv.conf) and the domain's DNS "
    "(`dig MX domain`).",
)  # fmt: skip
NULL_MX = _event(
    2484, "NullMx", C.INTERCHANGE, S.INFO, MED,
    "{queue_id}: {domain} accepts no mail (null MX, RFC 7505); {count} recipient(s) bounce",
    "The domain publishes a single MX record \"0 .\": it declares that it accepts no mail. "
    "Its recipients bounce at once with 556 5.1.10, without a retry.",
    "None; the sender has a wrong address.",
)  # fmt: skip
MAIL_DOMAIN_NOT_FOUND = _event(
    2485, "MailDomainNotFound", C.INTERCHANGE, S.INFO, MED,
    "{queue_id}: {domain} has no mail host: {error}; {count} recipient(s) bounce",
    "The domain does not exist (NXDOMAIN), or neither it nor any of its MX hosts has an "
    "address. Its recipients bounce at once.",
    "None; the sender has a wrong address. If the domain should exist, check its DNS.",
)  # fmt: skip
MX_HOST_FAILED = _event(
    2486, "MxHostFailed", C.INTERCHANGE, S.INFO, MED,
    "{queue_id}: mail host {host} [{address}] of {domain} failed: {error}; {next}",
    "A mail host of the domain refused the connection, did not answer, greeted with an "
    "error or failed during the transaction before the message was taken. The next host "
    "in preference order is tried in the same attempt; after the last, the recipients "
    "are deferred.",
    "None if another host took the message; if every host fails, check this host's "
    "outbound port 25 (providers often block it) and the hosts' replies.",
)  # fmt: skip
TLS_FALLBACK = _event(
    2487, "TlsFallback", C.INTERCHANGE, S.WARNING, MED,
    "{queue_id}: STARTTLS with {host} [{address}] failed: {error}; the message goes "
    "without TLS (opportunistic)",
    "The mail host offered STARTTLS but the TLS handshake failed. As Postfix's "
    "`smtp_tls_security_level = may` does, mailgate delivers without TLS rather than not "
    "at all; only without certificate verification, which makes TLS opportunistic.",
    "None; set the connector's starttls to \"required\" where TLS must not be skipped.",
)  # fmt: skip
DESTINATION_LIMITED = _event(
    2488, "DestinationLimited", C.INTERCHANGE, S.INFO, MED,
    "{queue_id}: {destination} ({connector}) at its limit of {limit} for {wait}s; deferred",
    "The connector's per-destination limit (connections open at once, or messages a "
    "second) kept this delivery waiting longer than it may wait; its recipients are "
    "deferred and retried later.",
    "None if it is rare; if it is frequent, fewer threads or a higher limit.",
)  # fmt: skip

# --- Supervision ---------------------------------------------------------------------------------
THREAD_STARTED = _event(
    5000, "ThreadStarted", C.SUPERVISION, S.INFO, MAX,
    "thread {thread} ({role}) started, native id {native_id}",
    "A supervised thread started (also after each restart).",
    "None.",
)  # fmt: skip
THREAD_EXITED = _event(
    5001, "ThreadExited", C.SUPERVISION, S.ERROR, MIN,
    "thread {thread} ({role}) returned without being asked to stop; restart {restarts} "
    "in {backoff}s",
    "A supervised thread ended on its own; it is restarted like one that raised.",
    "Report it; it is a bug.",
)  # fmt: skip
THREAD_RECYCLED = _event(
    5002, "ThreadRecycled", C.SUPERVISION, S.INFO, MED,
    "thread {thread} ({role}) recycled after {jobs} job(s); generation {generation} starts",
    "A worker thread ended by design (after [supervise] recycle_after deliveries or "
    "recycle_every) and a fresh one replaces it, so the restart path runs every day.",
    "None.",
)  # fmt: skip
THREAD_STALLED = _event(
    5003, "ThreadStalled", C.SUPERVISION, S.ERROR, MIN,
    "thread {thread} ({role}) stalled: no progress for {seconds}s, {kind} (cpu {cpu_rate}/s) "
    "on {queue_id} <{recipient}>; its work is released\n{stack}",
    "A busy thread made no progress for [supervise] stall_after. Its leases were released "
    "so another thread retries the work, and its connection was aborted. The stack shows "
    "where it is; CPU use tells a blocked thread from a spinning one.",
    "Look at the stack and the destination it talks to; a hung peer is the usual cause.",
)  # fmt: skip
THREAD_ABANDONED = _event(
    5004, "ThreadAbandoned", C.SUPERVISION, S.ERROR, MIN,
    "thread {thread} ({role}) did not recover within {grace}s: abandoned ({abandoned} so far), "
    "a replacement starts",
    "A stalled thread stayed stuck; Python cannot kill a thread, so it is left behind with "
    "its stop flag set and a fresh thread takes its place.",
    "Abandoned threads hold resources until the process restarts; restart the service at a "
    "quiet moment if they accumulate.",
)  # fmt: skip
THREAD_RESUMED = _event(
    5005, "ThreadResumed", C.SUPERVISION, S.INFO, MIN,
    "thread {thread} ({role}) made progress again after a stall",
    "A thread reported as stalled came back before it was abandoned.",
    "None.",
)  # fmt: skip
CONNECTOR_STALLED = _event(
    5006, "ConnectorStalled", C.SUPERVISION, S.WARNING, MIN,
    "connector {connector} has {due} recipient(s) due (oldest {oldest}s old) and completed "
    "no delivery for {seconds}s; threads: {threads}",
    "Mail is waiting for a connector that is not paused, but no delivery attempt has "
    "completed for [supervise] stall_after. Repeated until it clears.",
    "Look at the threads' states and stacks (`mailgate ctl threads`, `mailgate ctl dump`) "
    "and at the destination.",
)  # fmt: skip
CONNECTOR_RECOVERED = _event(
    5007, "ConnectorRecovered", C.SUPERVISION, S.INFO, MIN,
    "connector {connector} completes deliveries again after a stall of {seconds}s",
    "A stalled connector completed a delivery attempt.",
    "None.",
)  # fmt: skip
CONNECTOR_FAILED = _event(
    5008, "ConnectorFailed", C.SUPERVISION, S.CRITICAL, MIN,
    "connector {connector} is failed: its thread {thread} used up its restart budget",
    "A connector's thread kept dying; the service reports unhealthy until restarted.",
    "Read the 2380 events for the cause, fix it and restart the service.",
)  # fmt: skip
WORKER_STARTED = _event(
    5010, "WorkerStarted", C.SUPERVISION, S.INFO, MED,
    "worker {worker} ({role}) started, pid {pid}",
    "The master started a worker process (also after each restart).",
    "None.",
)  # fmt: skip
WORKER_EXITED = _event(
    5011, "WorkerExited", C.SUPERVISION, S.ERROR, MIN,
    "worker {worker} ({role}, pid {pid}) ended unexpectedly ({how}); its leases are released; "
    "restart {restarts} in {backoff}s",
    "A worker process died. Recipients it held go back to the queue at once and are "
    "delivered by its replacement; nothing accepted is lost.",
    "Read the events and standard error of the worker for the cause.",
)  # fmt: skip
WORKER_KILLED = _event(
    5012, "WorkerKilled", C.SUPERVISION, S.ERROR, MIN,
    "worker {worker} ({role}, pid {pid}) silent for {seconds}s: ended with SIGKILL",
    "A worker process stopped reporting to the master (wedged). A process, unlike a "
    "thread, can always be ended; the master killed it and starts another.",
    "Look at the worker's last events; report it if it recurs.",
)  # fmt: skip
WORKER_FAILED = _event(
    5013, "WorkerFailed", C.SUPERVISION, S.CRITICAL, MIN,
    "worker {worker} ({role}) died {restarts} times within {window}s; not restarted (the "
    "last: {how})",
    "A worker process keeps dying; restarting it again would only hide the problem. "
    "Without it the service cannot do its job: it exits non-zero (event 1002) so that "
    "its service manager restarts it.",
    "Read its 5020 and 5011 events for the cause, fix it, restart the service.",
)  # fmt: skip
WORKER_EXITING = _event(
    5020, "WorkerExiting", C.SUPERVISION, S.ERROR, MIN,
    "worker {worker} ({role}, pid {pid}) is exiting: {reason}",
    "A worker process cannot go on: it failed while starting (the error is named, with "
    "its traceback in the fields) or one of its critical threads failed. It says so on "
    "its channel before it exits, so the reason reaches the event log; the master "
    "restarts it (event 5011) within its restart budget.",
    "Fix the cause named (a file or socket in the way, a damaged store, ...); the "
    "restarted worker picks it up.",
)  # fmt: skip
WORKER_STUCK = _event(
    5030, "WorkerStuck", C.SUPERVISION, S.ERROR, MIN,
    "worker {worker} ({role}, pid {pid}): critical thread {thread} stalled for {seconds}s, "
    "past stall_grace ({grace}s): ended with SIGKILL",
    "A thread that its process's supervisor cannot replace (the SMTP loop, a group "
    "committer: a second one would share the wedged one's socket or lock) stayed stalled "
    "past [supervise] stall_grace, while the worker kept heart-beating. Only the end of "
    "the process frees it: the master killed the worker; its leases go back to the queue "
    "and it is restarted within its restart budget (event 5011), on the same port.",
    "Read the thread's 5003 event for its stack; report it if it recurs.",
)  # fmt: skip
THREAD_FAILED = _event(
    10003, "ThreadFailedFatally", C.SUPERVISION, S.CRITICAL, MIN,
    "thread {thread} ({role}) failed {restarts} times within {window}s; not restarted",
    "A thread kept dying; restarting it again would only hide the problem. Its work "
    "stops until the cause is fixed.",
    "Read its 2380 events for the cause, fix it, and restart the service.",
)  # fmt: skip

# --- Postoffice administration -------------------------------------------------------------------
MAILBOX_ADDED = _event(
    6000, "MailboxAdded", C.POSTOFFICE, S.INFO, MIN,
    "mailbox {mailbox} added as <{address}>",
    "An administrator created a postoffice mailbox.",
    "None.",
)  # fmt: skip
MAILBOX_REMOVED = _event(
    6001, "MailboxRemoved", C.POSTOFFICE, S.WARNING, MIN,
    "mailbox {mailbox} removed with {messages} message(s)",
    "An administrator removed a postoffice mailbox and the mail it held.",
    "None.",
)  # fmt: skip
UNSAFE_PATH = _event(
    6002, "UnsafePath", C.POSTOFFICE, S.ERROR, MIN,
    "refused path {path} below the postoffice root: {reason}",
    "A name or a symlink would have led outside the postoffice root; nothing was written.",
    "Remove the symlink or fix the name; look for who planted it.",
)  # fmt: skip
POSTOFFICE_OWNER_REFUSED = _event(
    6010, "PostofficeOwnerRefused", C.POSTOFFICE, S.ERROR, MIN,
    "files created in the postoffice cannot be given to {owner}: {reason}; deliveries to "
    "mailboxes will defer",
    "[postoffice] owner or group names another user or group than the service's, and the "
    "service may not give files away (only root may, or a member of the group for the "
    "group alone). Every delivery into a mailbox would fail, so each defers (event 2376).",
    "Run the service as root (it gives the files away at once), or empty [postoffice] "
    "owner and group and run the service as the mailbox owner.",
)  # fmt: skip

# --- The dashboard (admin listener) ------------------------------------------------------------
DASHBOARD_ACTION = _event(
    7000, "DashboardAction", C.CONTROL, S.INFO, MIN,
    "dashboard: {action} of {scope} by {client}: {outcome}",
    "An administrator changed the queue from the dashboard (retry, hold, release, delete "
    "or bounce); the queue's own event (4010 and its neighbours) follows as for the command "
    "line.",
    "None; the client address says who.",
)  # fmt: skip
DASHBOARD_REFUSED = _event(
    7001, "DashboardActionRefused", C.CONTROL, S.WARNING, MIN,
    "dashboard: {action} from {client} refused: {reason}",
    "A change was asked of the dashboard without the token (or its session cookie), with a "
    "wrong CSRF field, or while the dashboard is read-only (no [admin] token), or a login "
    "gave a wrong token. Nothing was changed.",
    "Log in with the token; repeated refusals from an unknown address are someone probing.",
)  # fmt: skip
DASHBOARD_ACTION_FAILED = _event(
    7002, "DashboardActionFailed", C.CONTROL, S.WARNING, MIN,
    "dashboard: {action} of {scope} by {client} failed: {reason}",
    "A change asked from the dashboard could not be carried out (no such message, nothing "
    "to act on, a recipient being delivered, the queue store failing); nothing was changed.",
    "Read the reason; the same command on the command line says the same.",
)  # fmt: skip
ADMIN_REQUEST_FAILED = _event(
    7003, "AdminRequestFailed", C.CONTROL, S.ERROR, MIN,
    "admin listener: answering {path} failed: {error}",
    "A page or endpoint of the admin listener raised; the client got a 500 naming the "
    "error and the listener goes on serving.",
    "Report it with the error; if it names the queue store, look at the store first.",
)  # fmt: skip

TRACKING_KEYS_FAILED = _event(
    4070, "TrackingKeysFailed", C.QUEUE, S.WARNING, MIN,
    "the tracking keys of newly queued messages could not be written: {error}",
    "The scheduler's pass that indexes new messages by sender, Message-ID and recipient "
    "(SQLite, queue/track.py) failed. Mail is not affected, and `mailgate track` and `queue "
    "list --sender/--recipient` still find every message: they also scan the messages the "
    "pass has not reached, more slowly as those grow. Retried every second; reported again "
    "every minute while it fails.",
    "Check the disk and `mailgate queue check`; the pass catches up by itself once the "
    "cause is gone.",
)  # fmt: skip

# --- Flushes overlapped with writes (issue 14, w-perf: 1050-1054, 2495-2499, 3030-3039) ---------
COMMIT_FLUSH_FAILED = _event(
    1050, "CommitFlushFailed", C.QUEUE, S.ERROR, MIN,
    "flushing {batches} committed batch(es) to disk failed: {error}",
    "The flush (fdatasync) that makes committed queue transactions durable failed, so "
    "they may not be on disk: every caller waiting on them got a temporary failure (451), "
    "and clients that send again may duplicate a message, never lose one.",
    "Check the disk (kernel log, free space); repeated failures need attention.",
)  # fmt: skip
