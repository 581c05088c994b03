"""Key exchange groups of an ssl.SSLContext: the list that Python 3.11's ssl cannot set.

`ssl` sets one ECDH curve only (set_ecdh_curve; a list arrives with set_groups in a later
Python), but a profile such as Mozilla's names several. OpenSSL's SSL_CTX_set1_groups_list
is called here through ctypes, on the SSL_CTX the context wraps, in the libssl that the
ssl module itself uses. Each step is checked first: CPython; that libssl's version is
ssl's; the pointer's SSL_CTX reports the context's own options. If any check fails, the
context falls back to the list's first elliptic curve alone, through set_ecdh_curve,
which still offers nothing outside the list. This runs once, when a context is built.
"""

from __future__ import annotations

import ctypes
import ssl
import sys

SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


def set_groups(context: ssl.SSLContext, groups: list[str], fallback: str) -> bool:
    """Offer exactly `groups` (OpenSSL names); True if set, False if only `fallback` is."""
    try:
        pointer, libssl = _ssl_ctx(context)
        ctrl = libssl.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        ctrl.restype = ctypes.c_long
        if ctrl(pointer, SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode()) == 1:
            return True
    except (OSError, AttributeError, LookupError):
        pass
    context.set_ecdh_curve(fallback)
    return False


def _ssl_ctx(context: ssl.SSLContext) -> tuple[int, ctypes.CDLL]:
    """The SSL_CTX* inside `context`, and the libssl it belongs to; LookupError if unsure."""
    if sys.implementation.name != "cpython":
        raise LookupError("the SSL_CTX can only be found in CPython's ssl objects")
    import _ssl

    # dlsym on the extension module's handle searches it, then the libraries it was linked
    # with: these are the very functions the ssl module calls.
    libssl = ctypes.CDLL(_ssl.__file__)
    version = libssl.OpenSSL_version_num
    version.argtypes, version.restype = [], ctypes.c_ulong
    if version() != ssl.OPENSSL_VERSION_NUMBER:
        raise LookupError("this libssl is not the ssl module's")
    # CPython's PySSLContext: PyObject_HEAD, then `SSL_CTX *ctx`.
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise LookupError("no SSL_CTX")
    options = libssl.SSL_CTX_get_options
    options.argtypes, options.restype = [ctypes.c_void_p], ctypes.c_uint64
    if options(pointer) != int(context.options):
        raise LookupError("the pointer is not this context's SSL_CTX")
    return pointer, libssl
