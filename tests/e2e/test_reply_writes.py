"""One reply, one write: a multi-line reply, and the replies to a group of pipelined commands,
reach the client in one TCP segment.

Clients that read one reply per recv() (nmap's smtp scripts, smuggling scanners) get out of
step when a multi-line reply is split over segments. The tests count the data segments the
client's kernel received (tests/support/segments.py).
"""

from __future__ import annotations

from tests.support.process import Mailgate
from tests.support.segments import Client

ALICE = b"alice@po1.net1.example.test"


def test_ehlo_reply_is_one_write(mailgate: Mailgate) -> None:
    client = Client(mailgate.port)
    try:
        [ehlo], segments = client.exchange(b"EHLO client.test\r\n", 1)
        lines = ehlo.count(b"\n")
        assert lines >= 7 and ehlo.endswith(b"250 HELP\r\n"), ehlo
        assert segments == 1, f"a {lines}-line EHLO reply took {segments} segments"
        # Again, and after RSET: every EHLO, not only the first.
        [rset, ehlo2], segments = client.exchange(b"RSET\r\nEHLO again.test\r\n", 2)
        assert rset.startswith(b"250 ") and ehlo2 == ehlo
        assert segments == 1, segments
    finally:
        client.close()


def test_pipelined_replies_are_one_write(mailgate: Mailgate) -> None:
    client = Client(mailgate.port)
    try:
        client.exchange(b"EHLO client.test\r\n", 1)
        group = (
            b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<" + ALICE + b">\r\n"
            b"RCPT TO:<nobody@po1.net1.example.test>\r\nDATA\r\n"
        )
        replies, segments = client.exchange(group, 4)
        assert [r[:4] for r in replies] == [b"250 ", b"250 ", b"550 ", b"354 "], replies
        assert segments == 1, f"four pipelined replies took {segments} segments"
        # The end of data with the next transaction pipelined behind it: the 250 for the
        # message (after its commit) and the replies to what followed go out together.
        after = b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<" + ALICE
        replies, segments = client.exchange(after + b">\r\n", 3)
        assert replies[0].startswith(b"250 2.0.0 Ok: queued as "), replies
        assert [r[:4] for r in replies[1:]] == [b"250 ", b"250 "], replies
        assert segments == 1, f"three replies ready together took {segments} segments"
        # The last group ends the session: its replies still arrive, in one segment, then EOF.
        replies, segments = client.exchange(b"RSET\r\nNOOP\r\nQUIT\r\n", 3)
        assert [r[:4] for r in replies] == [b"250 ", b"250 ", b"221 "], replies
        assert segments == 1, segments
        assert client.rfile.read() == b"", "the server closed the connection after 221"
    finally:
        client.close()
