"""`mailgate gen-cert`, run as an administrator would.

Regression (issue "What outside tools and a day of administration found", point 6): the
certificate named the machine instead of the configured service.hostname, the command
refused `--config` (which the README promises of every command), and it lasted 825 days,
past the 366 that Mozilla's profiles allow.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

CONFIG = '[service]\nhostname = "mx.gateway.example"\n'


def gen_cert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailgate", "gen-cert", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def load(out: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())


def test_gen_cert_names_the_configured_hostname(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text(CONFIG)
    result = gen_cert("--config", str(tmp_path / "mailgate.toml"), "--out", str(tmp_path / "pki"))
    assert result.returncode == 0, result.stderr
    cert = load(tmp_path / "pki")
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "mx.gateway.example"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mx.gateway.example" in names.get_values_for_type(x509.DNSName)
    assert (tmp_path / "pki" / "key.pem").stat().st_mode & 0o077 == 0


def test_gen_cert_default_lifespan_is_under_366_days(tmp_path: Path) -> None:
    result = gen_cert("--out", str(tmp_path / "pki"))
    assert result.returncode == 0, result.stderr
    cert = load(tmp_path / "pki")
    lifespan = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifespan < datetime.timedelta(days=366), lifespan
    refused = gen_cert("--out", str(tmp_path / "long"), "--days", "825")
    assert refused.returncode != 0 and "366" in refused.stderr
