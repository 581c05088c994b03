"""Which process holds a TCP port, read from /proc: for the refusal that names it.

A listening (or bound) socket on the port is found in /proc/net/tcp and tcp6 by port
alone (a wildcard listener conflicts with every address), then its inode in the fd table
of each process. A mailgate master and its receive workers share one socket: the holder
named is the one whose parent does not hold it too, the master. Only this user's
processes can be read (or every one's, as root); an unreadable holder gives None, and
the refusal says the pid is unknown. Linux only; elsewhere None as well.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LISTEN, CLOSE = "0A", "07"  # TCP states in /proc/net/tcp: listening, bound but idle


def holder(port: int) -> int | None:
    """The pid holding `port` (the master of a group sharing it), or None if unknown."""
    pids = holders(port)
    for pid in pids:
        if _parent(pid) not in pids:
            return pid
    return pids[0] if pids else None


def holders(port: int) -> list[int]:
    """Every pid with a descriptor on a socket bound to `port`, lowest first."""
    targets = {f"socket:[{inode}]" for inode in _inodes(port)}
    if not targets:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone, or another user's
            if any(_link(fd.path) in targets for fd in os.scandir(f"{entry.path}/fd")):
                found.append(int(entry.name))
    return sorted(found)


def _link(fd_path: str) -> str:
    """What one descriptor names, "" if it closed since the listing: a process opening
    and closing files as it is read (a child starting up) still counts by its others."""
    try:
        return os.readlink(fd_path)
    except OSError:
        return ""


def command_line(pid: int) -> str:
    """The holder's command line, shortened, for the refusal; "" if unreadable."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text if len(text) <= 120 else text[:117] + "..."


def _inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] not in (LISTEN, CLOSE):
                continue
            if int(fields[1].rpartition(":")[2], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])
