"""STARTTLS meets Mozilla's "intermediate" server profile, probed from outside with
`openssl s_client` against a running service, with an ECDSA and with an RSA certificate:
TLS 1.2 and 1.3 only, AEAD suites with forward secrecy only, groups X25519, P-256, P-384.

Regression (issue "What outside tools and a day of administration found", point 6): CBC
suites (ECDHE-ECDSA-AES128-SHA256, -AES256-SHA384) and the X448 and secp521r1 groups were
offered.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailgate.security.certs import generate
from tests.support.process import DEFAULT_CONFIG, Mailgate
from tests.support.tools import require

INTERMEDIATE_TLS12 = [
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
]  # fmt: skip
INTERMEDIATE_TLS13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                      "TLS_CHACHA20_POLY1305_SHA256"]  # fmt: skip
INTERMEDIATE_GROUPS = ["X25519", "prime256v1", "secp384r1"]
REFUSED_TLS12 = {
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
              "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"],
    "rsa": ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA",
            "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256", "AES128-SHA"],
}  # fmt: skip
REFUSED_GROUPS = ["X448", "secp521r1"]


def rsa_pki(out: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out / "cert.pem", out / "key.pem"


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Mailgate]]:
    kind = str(request.param)
    root = tmp_path_factory.mktemp(f"tls-{kind}")
    cert, key = generate(root / "pki", "localhost") if kind == "ecdsa" else rsa_pki(root / "pki")
    config = DEFAULT_CONFIG + f'\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    mg = Mailgate(root, config=config)
    mg.start()
    try:
        yield kind, mg
    finally:
        mg.close()


def handshake(mg: Mailgate, *options: str) -> tuple[bool, str]:
    """STARTTLS with `openssl s_client` restricted by `options`: did the handshake succeed?"""
    result = subprocess.run(
        [require("openssl"), "s_client", "-connect", f"127.0.0.1:{mg.port}",
         "-starttls", "smtp", "-servername", "localhost", "-brief", *options],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = result.stdout + result.stderr
    return result.returncode == 0 and "CONNECTION ESTABLISHED" in output, output


def test_starttls_refuses_cbc_and_static_rsa_suites(server: tuple[str, Mailgate]) -> None:
    kind, mg = server
    accepted = [c for c in REFUSED_TLS12[kind] if handshake(mg, "-tls1_2", "-cipher", c)[0]]
    assert accepted == [], f"suites outside the intermediate profile accepted: {accepted}"


def versions(kind: str) -> tuple[str, ...]:
    """Where a group can be probed alone: in TLS 1.2 the client's groups also bound the curve
    of an ECDSA certificate (P-256 here), so only the RSA server shows the groups there."""
    return ("-tls1_2", "-tls1_3") if kind == "rsa" else ("-tls1_3",)


def test_starttls_refuses_x448_and_secp521r1(server: tuple[str, Mailgate]) -> None:
    kind, mg = server
    accepted = [
        (version, group)
        for version in versions(kind)
        for group in REFUSED_GROUPS
        if handshake(mg, version, "-groups", group)[0]
    ]
    assert accepted == [], f"groups outside the intermediate profile accepted: {accepted}"


def test_starttls_refuses_tls_1_1_and_tls_1_3_ccm(server: tuple[str, Mailgate]) -> None:
    _, mg = server
    # SECLEVEL=0: this client would refuse TLS 1.1 on its own otherwise, proving nothing.
    assert not handshake(mg, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")[0]
    assert not handshake(mg, "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256")[0]


def test_starttls_accepts_every_intermediate_suite_and_group(server: tuple[str, Mailgate]) -> None:
    kind, mg = server
    suites = [c for c in INTERMEDIATE_TLS12 if f"-{kind.upper()}-" in c]
    failed = [c for c in suites if not handshake(mg, "-tls1_2", "-cipher", c)[0]]
    failed += [c for c in INTERMEDIATE_TLS13 if not handshake(mg, "-tls1_3", "-ciphersuites", c)[0]]
    failed += [
        f"{version} {group}"
        for version in versions(kind)
        for group in INTERMEDIATE_GROUPS
        if not handshake(mg, version, "-groups", group)[0]
    ]
    assert failed == [], f"intermediate-profile parameters refused: {failed}"
