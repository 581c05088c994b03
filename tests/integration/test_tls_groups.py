"""security/groups.py: the key exchange groups of a server context, set through OpenSSL on
CPython, and the single-curve fallback; each probed with `openssl s_client` over loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.security import groups
from mailgate.security.certs import generate
from tests.support.tools import require

PROFILE = ["X25519", "prime256v1", "secp384r1"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("pki"), "localhost")


@contextlib.contextmanager
def serve(context: ssl.SSLContext) -> Iterator[int]:
    """A TLS server on loopback that completes handshakes until closed; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()


def accepts(port: int, group: str) -> bool:
    result = subprocess.run(
        [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
         "-groups", group, "-brief"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.returncode == 0 and "CONNECTION ESTABLISHED" in result.stdout + result.stderr


def context(pki: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki)
    return ctx


def test_the_group_list_is_set_through_openssl(pki: tuple[Path, Path]) -> None:
    ctx = context(pki)
    assert groups.set_groups(ctx, PROFILE, fallback="prime256v1") is True
    with serve(ctx) as port:
        offered = {g: accepts(port, g) for g in [*PROFILE, "X448", "secp521r1", "ffdhe2048"]}
        assert offered == {
            "X25519": True, "prime256v1": True, "secp384r1": True,
            "X448": False, "secp521r1": False, "ffdhe2048": False,
        }  # fmt: skip


def test_where_the_ssl_ctx_cannot_be_trusted_only_the_fallback_curve_is_offered(
    pki: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsure(context: ssl.SSLContext) -> object:
        raise LookupError("the pointer is not this context's SSL_CTX")

    monkeypatch.setattr(groups, "_ssl_ctx", unsure)
    ctx = context(pki)
    assert groups.set_groups(ctx, PROFILE, fallback="prime256v1") is False
    with serve(ctx) as port:
        offered = {g: accepts(port, g) for g in [*PROFILE, "X448", "secp521r1"]}
        assert offered == {
            "X25519": False, "prime256v1": True, "secp384r1": False,
            "X448": False, "secp521r1": False,
        }  # fmt: skip


def test_the_ssl_ctx_found_is_the_contexts_own(pki: tuple[Path, Path]) -> None:
    """The check that guards the ctypes call: options changed through Python show through
    the pointer found, so the pointer is this context's SSL_CTX and no other."""
    ctx = context(pki)
    pointer, libssl = groups._ssl_ctx(ctx)
    get = libssl.SSL_CTX_get_options
    before = get(pointer)
    ctx.options |= ssl.OP_NO_TICKET
    assert get(pointer) == int(ctx.options) != before
    assert groups._ssl_ctx(context(pki))[0] != pointer
