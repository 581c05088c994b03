"""receive/holder.py: the process holding a TCP port, found in /proc, as the refusal of a
second instance names it; and bind() raising PortInUse with that pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from mailgate.errors import PortInUse
from mailgate.receive import holder as holder_module
from mailgate.receive.holder import command_line, holder, holders
from mailgate.receive.listeners import bind


def test_a_socket_shared_with_a_child_is_held_by_the_parent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE, pass_fds=(sock.fileno(),),
        )  # fmt: skip
        try:
            assert holders(port) == sorted([os.getpid(), child.pid])
            assert holder(port) == os.getpid()  # the master, not its worker
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
    assert holders(port) == [] and holder(port) is None


def test_a_descriptor_closed_during_the_scan_does_not_hide_the_holder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A child starting up opens and closes files while its fd table is read: one entry
    # gone between the listing and its readlink once hid the whole process.
    real = os.readlink
    gone = []

    def readlink(path: str) -> str:
        if path.startswith(f"/proc/{os.getpid()}/fd/") and not gone:
            gone.append(path)
            raise FileNotFoundError(path)
        return real(path)

    with socket.create_server(("127.0.0.1", 0)) as sock:
        monkeypatch.setattr(holder_module.os, "readlink", readlink)
        assert holders(sock.getsockname()[1]) == [os.getpid()]
    assert gone, "the scan read this process's descriptors"


def test_bind_on_a_taken_port_names_the_holder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse) as info:
            bind("127.0.0.1", port)
    assert info.value.listen == f"127.0.0.1:{port}" and info.value.pid == os.getpid()
    assert f"pid {os.getpid()}" in str(info.value)
    assert "pytest" in command_line(os.getpid()) or sys.executable in command_line(os.getpid())
