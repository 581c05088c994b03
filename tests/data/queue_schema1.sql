BEGIN TRANSACTION;
CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL REFERENCES recipients (id),
    message_id   TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION NOT NULL,
    disposition  TEXT NOT NULL,
    reply        TEXT NOT NULL
);
INSERT INTO "attempts" VALUES(1,1,'60A24182D8240000001',1700000060.0,1700000060.0,'delivered','250 2.0.0 delivered');
INSERT INTO "attempts" VALUES(2,3,'60A24183CC480000002',1700000060.0,1700000060.0,'deferred','451 4.2.2 mailbox full');
INSERT INTO "attempts" VALUES(3,2,'60A24182D8240000001',1700000060.0,1700000060.0,'delivered','250 ok');
CREATE TABLE bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages (id),
    data       BLOB NOT NULL
);
INSERT INTO "bodies" VALUES('60A24183CC480000002',X'5375626A6563743A206F6C6420320D0A4D6573736167652D49443A203C6F6C6432406578616D706C652E6F72673E0D0A0D0A626F647920320D0A');
INSERT INTO "bodies" VALUES('60A24184C06C0000003',X'5375626A6563743A206F6C6420330D0A4D6573736167652D49443A203C6F6C6433406578616D706C652E6F72673E0D0A0D0A626F647920330D0A');
INSERT INTO "bodies" VALUES('60A24185B4900000004',X'5375626A6563743A206F6C6420340D0A4D6573736167652D49443A203C6F6C6434406578616D706C652E6F72673E0D0A0D0A626F647920340D0A');
CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    received_at       DOUBLE PRECISION NOT NULL,
    sender            TEXT NOT NULL,
    size              INTEGER NOT NULL,
    client            TEXT NOT NULL,
    header_message_id TEXT,
    smtputf8          INTEGER NOT NULL DEFAULT 0,
    kind              TEXT NOT NULL DEFAULT 'normal',
    origin            TEXT,
    done_at           DOUBLE PRECISION
, delay_warned INTEGER NOT NULL DEFAULT 0);
INSERT INTO "messages" VALUES('60A24182D8240000001',1700000001.0,'sender1@example.org',58,'old [127.0.0.1]','<old1@example.org>',0,'normal',NULL,1700000050.0,0);
INSERT INTO "messages" VALUES('60A24183CC480000002',1700000002.0,'sender2@example.org',58,'old [127.0.0.1]','<old2@example.org>',0,'normal',NULL,NULL,0);
INSERT INTO "messages" VALUES('60A24184C06C0000003',1700000003.0,'sender3@example.org',58,'old [127.0.0.1]','<old3@example.org>',0,'normal',NULL,NULL,0);
INSERT INTO "messages" VALUES('60A24185B4900000004',1700000004.0,'sender4@example.org',58,'old [127.0.0.1]','<old4@example.org>',0,'normal',NULL,NULL,0);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "meta" VALUES('schema','1');
CREATE TABLE recipients (
    id                INTEGER PRIMARY KEY,
    message_id        TEXT NOT NULL REFERENCES messages (id),
    address           TEXT NOT NULL,
    connector         TEXT NOT NULL,
    state             TEXT NOT NULL,
    due_at            DOUBLE PRECISION NOT NULL,
    lease_owner       TEXT,
    lease_until       DOUBLE PRECISION,
    released          INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    internal_failures INTEGER NOT NULL DEFAULT 0,
    last_reply        TEXT,
    remote_mta        TEXT,
    updated_at        DOUBLE PRECISION NOT NULL
);
INSERT INTO "recipients" VALUES(1,'60A24182D8240000001','a1@po1.net1.mx.test','postoffice','delivered',1700000001.0,NULL,NULL,0,1,0,'250 2.0.0 delivered',NULL,1700000050.0);
INSERT INTO "recipients" VALUES(2,'60A24182D8240000001','far1@elsewhere.org','smarthost','delivered',1700000001.0,NULL,NULL,0,1,0,'250 ok',NULL,1700000050.0);
INSERT INTO "recipients" VALUES(3,'60A24183CC480000002','a2@po1.net1.mx.test','postoffice','deferred',1700000110.0,NULL,NULL,0,1,0,'451 4.2.2 mailbox full',NULL,1700000050.0);
INSERT INTO "recipients" VALUES(4,'60A24184C06C0000003','far3@elsewhere.org','smarthost','held',1700000003.0,NULL,NULL,0,0,0,NULL,NULL,1700000003.0);
INSERT INTO "recipients" VALUES(5,'60A24185B4900000004','a4@po1.net1.mx.test','postoffice','active',1700000004.0,'old-node:4242:postoffice-1:1:',1700000350.0,0,1,0,NULL,NULL,1700000050.0);
INSERT INTO "recipients" VALUES(6,'60A24185B4900000004','a5@po1.net1.mx.test','postoffice','queued',1700000004.0,NULL,NULL,0,0,0,NULL,NULL,1700000004.0);
CREATE INDEX messages_origin ON messages (origin) WHERE origin IS NOT NULL;
CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
CREATE INDEX messages_open ON messages (received_at, id) WHERE done_at IS NULL;
CREATE INDEX recipients_due ON recipients (connector, due_at)
    WHERE state IN ('queued', 'deferred');
CREATE INDEX recipients_lease ON recipients (lease_until) WHERE state = 'active';
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX attempts_message ON attempts (message_id);
CREATE INDEX messages_header_message_id ON messages (header_message_id, received_at)
    WHERE header_message_id IS NOT NULL;
CREATE INDEX messages_sender ON messages (sender, received_at);
CREATE INDEX messages_dsn ON messages (client) WHERE kind <> 'normal';
CREATE INDEX recipients_address ON recipients (address, message_id);
CREATE INDEX messages_waiting ON messages (received_at) WHERE done_at IS NULL AND delay_warned = 0;
COMMIT;
