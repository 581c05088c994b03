"""TLS for the SMTP listener: a server context meeting Mozilla's "intermediate" profile.

TLS 1.2 and 1.3 only. TLS 1.2 suites: forward-secret key exchange (ECDHE, DHE) with AEAD
ciphers only, none of the CBC or static-RSA suites OpenSSL's defaults offer; TLS 1.3
suites: OpenSSL's defaults, which are the profile's three (Python cannot set them).
Key exchange groups X25519, P-256 and P-384 only (see security/groups.py for how), and
the client's order of preference wins, as the profile says (every suite offered is strong).
A missing or unreadable file, or a key that does not match the certificate, is an error
at start (ssl.SSLError or OSError reach the caller), never a silently plain-text server.
"""

from __future__ import annotations

import ssl

from mailgate.security.groups import set_groups

# Mozilla Server Side TLS 5.7, "intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS).
INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])  # fmt: skip
INTERMEDIATE_GROUPS = ["X25519", "prime256v1", "secp384r1"]


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    set_groups(context, INTERMEDIATE_GROUPS, fallback="prime256v1")
    context.load_cert_chain(cert, key)
    return context
