"""Q201120: a corrupt configuration file broke the threads of the service we replace.

DESIGN §5 row 16: the configuration is validated before use; a bad reload keeps the
running configuration and reports the error (event 1100). Here the file is damaged at
the byte level (not valid UTF-8, a NUL, nesting deep enough to exhaust the parser),
SIGHUP and `ctl reload` are sent to a real service in both modes, and the service must
keep serving with the configuration it had; `check-config` must say the same thing.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]
VALID = DEFAULT_CONFIG.encode()

# Each damage, and what the report must say about where it is.
DAMAGE = {
    "0xff-in-comment": (VALID + b"\n# caf\xff\n", "line 17, column 6 (byte 0xff)"),
    "truncated-utf8": (VALID + b'\n[smarthost]\nhelo = "caf\xc3"\n', "line 18, column 12"),
    "surrogate": (VALID + b'\n[smarthost]\nhelo = "\xed\xa0\x80"\n', "line 18, column 9"),
    "nul-byte": (VALID + b"\n\x00\n", "line 17"),
    "nul-escape-in-path": (VALID + b'\n[queue]\npath = "/tmp/q\\u0000.db"\n', "queue.path"),
    "deep-nesting": (VALID + b"\nx = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested"),
}


def send(mg: Mailgate, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        assert client.sendmail("s@example.org", [ALICE], f"Subject: {subject}\r\n\r\nhi\r\n") == {}


def reload_gauge(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r"^mailgate_config_last_reload_successful (\S+)$", text, re.M)
    assert found, "no mailgate_config_last_reload_successful in /metrics"
    return float(found.group(1))


def problems_said_by_check_config(mg: Mailgate, path: Path) -> list[str]:
    result = subprocess.run(
        mg.command("check-config", str(path)), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return [line.strip() for line in result.stderr.splitlines()[1:]]


@pytest.mark.parametrize("mode", MODES)
def test_bad_reload_keeps_running_and_reports_1100(tmp_path: Path, mode: tuple[str, ...]) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start(*mode, "--admin-listen", f"127.0.0.1:{admin}")
    try:
        assert mg.proc is not None
        assert reload_gauge(admin) == 1
        for n, (damage, (data, where)) in enumerate(DAMAGE.items(), 1):
            mg.config_path.write_bytes(data)
            mg.proc.send_signal(signal.SIGHUP)
            problems = mg.wait_events(1100, count=n)[-1]["fields"]["problems"]
            assert where in problems, (damage, problems)
            if damage != "nul-escape-in-path":  # that one is named by its key
                assert str(mg.config_path) in problems, (damage, problems)
            assert mg.proc.poll() is None, (damage, mg.stderr())
            # check-config names the same problem the event did.
            said = problems_said_by_check_config(mg, mg.config_path)
            assert said == problems.split("; "), (damage, said, problems)
        # `ctl reload` reaches the same validation over the control socket.
        answer = mg.cli("ctl", "reload", "--json")
        assert answer.returncode == 0, answer.stderr
        assert '"reloaded": false' in answer.stdout, answer.stdout
        mg.wait_events(1100, count=len(DAMAGE) + 1)
        # The service runs on with the configuration it had: it accepts and delivers, and
        # says that the last reload was refused.
        assert not mg.events(1006), "an exception escaped"
        assert mg.healthy()
        assert "last reload was REFUSED" in mg.cli("ctl", "status").stdout
        assert reload_gauge(admin) == 0
        send(mg, "after the bad reloads")
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="delivery")
        # A good file is taken again, and the stop is clean.
        mg.config_path.write_bytes(VALID)
        mg.proc.send_signal(signal.SIGHUP)
        mg.wait_events(1101)
        wait_for(lambda: reload_gauge(admin) == 1, 10, what="the reload gauge back to 1")
        assert mg.stop() == 0
    finally:
        mg.close()


def test_start_with_a_non_utf8_file_is_refused_naming_file_and_position(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.config_path.write_bytes(VALID + b"\n# caf\xff\n")
    mg.start(wait=False)
    assert mg.proc is not None
    assert mg.proc.wait(30) == 2
    err = mg.stderr()
    assert "Traceback" not in err, err
    assert f"{mg.config_path}: not valid UTF-8 at line 17, column 6 (byte 0xff)" in err, err


def test_ctl_finds_the_service_even_when_its_file_is_damaged(tmp_path: Path) -> None:
    """`ctl` reads only service.data_dir from the file: a damaged byte elsewhere must not
    stop an administrator from talking to the running service."""
    mg = Mailgate(tmp_path)
    mg.start()
    try:
        damaged = tmp_path / "damaged.toml"
        damaged.write_bytes(f'[service]\ndata_dir = "{mg.data_dir}"\n# caf\xff\n'.encode("latin-1"))
        result = subprocess.run(
            mg.command("ctl", "health", "--config", str(damaged)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "healthy: true" in result.stdout, result.stdout
    finally:
        mg.close()
