"""Enhanced status codes (RFC 2034/3463) for every reply, including aiosmtpd's own.

aiosmtpd writes some replies without an enhanced code ("250 OK", "503 Error: need
MAIL command"); since we advertise ENHANCEDSTATUSCODES, each such reply gets the
generic code for its basic code. Greetings, EHLO/HELO replies and intermediate
replies (334, 354) are left alone, as RFC 2034 allows.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_BASIC = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)

GENERIC = {
    "211": "2.0.0", "214": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0",
    "251": "2.1.5", "252": "2.0.0", "421": "4.3.0", "450": "4.2.0", "451": "4.3.0",
    "452": "4.3.1", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
    "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "550": "5.0.0",
    "551": "5.1.6", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip


_DONE: dict[str, str] = {}  # the answers for short replies, which repeat: two regexes less
_DONE_SIZE = 1024  # then cleared (client text can make replies vary without bound)
_DONE_LENGTH = 80


def with_enhanced_code(status: str) -> str:
    """`status` with the generic enhanced code inserted if it has none and needs one."""
    done = _DONE.get(status)
    if done is not None:
        return done
    done = _with_enhanced_code(status)
    if len(status) <= _DONE_LENGTH:
        if len(_DONE) >= _DONE_SIZE:
            _DONE.clear()
        _DONE[status] = done
    return done


def _with_enhanced_code(status: str) -> str:
    if _HAS_ENHANCED.match(status):
        return status
    match = _BASIC.match(status)
    if match is None:
        return status
    code, sep, text = match.groups()
    enhanced = GENERIC.get(code)
    if enhanced is None:
        return status
    return f"{code}{sep}{enhanced} {text}" if text else f"{code}{sep}{enhanced}"
