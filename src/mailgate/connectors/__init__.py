"""connectors: the ways out of mailgate: postoffice Maildirs, a smarthost, MX, LMTP.

postoffice.py delivers into Maildirs; smtp.py (a smarthost), mx.py (direct, with
resolve.py) and lmtp.py speak the protocol of client.py through the session of
smtp_session.py, under the per-destination limits of limits.py; lines.py breaks long lines.
"""
