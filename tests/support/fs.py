"""A small real filesystem (tmpfs) for full-disk tests; skips where mounting is not allowed
(and fails under CI=true, where the suite runs as root and every test must run)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.tools import missing


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        missing("mounting a small filesystem needs root")
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding `directory`; returns the filler file to unlink later."""
    filler = directory / "filler"
    # Unbuffered: a write refused for want of space leaves nothing for close() to flush
    # (buffered, the last block came back from close() as ENOSPC, past the suppress).
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler
