"""TLS for the SMTP listener: a server context from the configured certificate and key.

TLS 1.2 or newer, the library's default ciphers. A missing or unreadable file, or
a key that does not match the certificate, is an error at start (ssl.SSLError or
OSError reach the caller), never a silently plain-text server.
"""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
