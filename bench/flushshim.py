"""The flush-latency shim (bench/flushdelay.c): build it, run servers under it, read its counts.

`FlushShim(build_dir, delay_us)` compiles flushdelay.c with gcc into `build_dir` (never into
the repository) and makes counter files there; `environment(counter)` is what a server's
processes need (LD_PRELOAD, FLUSHDELAY_US, FLUSHDELAY_COUNTERS); `check()` proves on a child
process that calls are counted and delayed before any figure depends on it. The directory and
files are world-readable (the counters world-writable): Postfix's daemons run as `postfix` and
`nobody` and must load the library and count. Raises BenchError when gcc or the check fails.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from measure import BenchError, command_line

SOURCE = Path(__file__).resolve().parent / "flushdelay.c"
SLOTS = ("fsync", "fdatasync", "syncfs", "sync", "msync", "sync_file_range")


class FlushCounter:
    """One shared counter file: every process loaded with it adds its flushes there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(bytes(8 * len(SLOTS)))
        path.chmod(0o666)

    def read(self) -> dict[str, int]:
        values = struct.unpack(f"={len(SLOTS)}Q", self.path.read_bytes()[: 8 * len(SLOTS)])
        return dict(zip(SLOTS, values, strict=True))

    def total(self) -> int:
        return sum(self.read().values())


class FlushShim:
    def __init__(self, build_dir: Path, delay_us: int, gcc: str = "gcc") -> None:
        self.dir = build_dir
        self.delay_us = delay_us
        self.library = build_dir / "flushdelay.so"
        build_dir.mkdir(parents=True, exist_ok=True)
        build_dir.chmod(0o755)
        if shutil.which(gcc) is None:
            raise BenchError(f"{gcc} is needed to build the flush shim (apt-get install gcc)")
        built = subprocess.run(
            [gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(self.library), str(SOURCE), "-ldl"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            raise BenchError(f"building {SOURCE.name} failed: {built.stderr.strip()}")
        self.library.chmod(0o755)

    def counter(self, name: str) -> FlushCounter:
        return FlushCounter(self.dir / f"{name}.counters")

    def environment(self, counter: FlushCounter) -> dict[str, str]:
        preload = " ".join(p for p in (str(self.library), os.environ.get("LD_PRELOAD")) if p)
        return {
            "LD_PRELOAD": preload,
            "FLUSHDELAY_US": str(self.delay_us),
            "FLUSHDELAY_COUNTERS": str(counter.path),
        }

    def missing(self, pids: list[int]) -> list[str]:
        """The command lines of those of `pids` that run without the library loaded."""
        lacking = []
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue  # gone meanwhile
            if str(self.library) not in maps:
                lacking.append(f"{pid} {command_line(pid)[:80]}")
        return lacking

    def check(self, calls: int = 20) -> float:
        """Run `calls` fsyncs and fdatasyncs in a child under the shim; the seconds each took.
        BenchError unless every one was counted and, with a delay, took at least the delay."""
        counter = self.counter("check")
        script = (
            "import os, sys, tempfile, time\n"
            "with tempfile.TemporaryFile(dir=sys.argv[2]) as f:\n"
            "    t = time.monotonic()\n"
            "    for i in range(int(sys.argv[1])):\n"
            "        f.write(b'x'); f.flush(); (os.fsync if i % 2 else os.fdatasync)(f.fileno())\n"
            "    print(time.monotonic() - t)\n"
        )
        env = {**os.environ, **self.environment(counter)}
        done = subprocess.run(
            [sys.executable, "-c", script, str(calls), str(self.dir)],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"the flush shim check failed: {done.stderr.strip()[-500:]}")
        counts = counter.read()
        per_call = float(done.stdout) / calls
        if counts["fsync"] + counts["fdatasync"] != calls:
            raise BenchError(f"the flush shim counted {counts} for {calls} calls")
        if per_call < self.delay_us / 1e6:
            raise BenchError(
                f"a flush took {per_call * 1e6:.0f} us under a {self.delay_us} us shim"
            )
        return per_call


def describe(shim: FlushShim | None, per_call: float) -> str:
    if shim is None:
        return "flushes: not counted (--no-shim)"
    when = time.strftime("%H:%M:%S")
    return (
        f"flush shim {shim.library} (+{shim.delay_us} us after each flush, counted): "
        f"a checked fsync/fdatasync took {per_call * 1e6:.0f} us at {when}"
    )
