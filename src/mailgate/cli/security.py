"""`mailgate gen-cert` and `mailgate passwd`: TLS certificates and AUTH credentials."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from mailgate.cli.common import config_options, get_config
from mailgate.security.certs import DEFAULT_DAYS, MAX_DAYS, generate
from mailgate.security.passwords import Credentials, CredentialsError


@click.command("gen-cert")
@config_options
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write cert.pem and key.pem (0600) into.",
)
@click.option(
    "--hostname", default=None, help="Name in the certificate (default: service.hostname)."
)
@click.option(
    "--days",
    type=click.IntRange(1, MAX_DAYS),
    default=DEFAULT_DAYS,
    show_default=True,
    help=f"Validity in days; Mozilla's TLS profiles allow at most {MAX_DAYS}.",
)
def gen_cert(
    config_path: Path | None, data_dir: Path | None, out: Path, hostname: str | None, days: int
) -> None:
    """Make a self-signed certificate and key for trying STARTTLS ([smtp] tls_cert/tls_key).

    The certificate names service.hostname (the name the service greets with), as its
    common name and subject alternative name, besides localhost and 127.0.0.1."""
    name = hostname or get_config(config_path, data_dir).service.hostname
    cert, key = generate(out, name, days)
    click.echo(f"wrote {cert} and {key} for {name}, valid {days} days")


@click.group()
def passwd() -> None:
    """Manage the AUTH credentials file ([smtp] auth_users); passwords are stored as scrypt."""


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise click.ClickException("the two passwords differ")
    return first


@passwd.command("add")
@click.argument("user")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def add(user: str, path: Path) -> None:
    """Add USER, or change their password (read from standard input, or prompted twice)."""
    try:
        new = Credentials(path).set(user, _read_password())
    except (CredentialsError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'added' if new else 'changed'} {user} in {path}")


@passwd.command("remove")
@click.argument("user")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def remove(user: str, path: Path) -> None:
    """Remove USER."""
    try:
        removed = Credentials(path).remove(user)
    except (CredentialsError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if not removed:
        raise click.ClickException(f"no user {user} in {path}")
    click.echo(f"removed {user} from {path}")
