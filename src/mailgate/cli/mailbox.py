"""`mailgate mailbox add|list|remove`: postoffice administration, with or without the service."""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from mailgate.cli.common import config_options, get_config
from mailgate.errors import AddressError
from mailgate.observe import catalog
from mailgate.service import wiring


@click.group()
def mailbox() -> None:
    """Administer postoffice mailboxes (ADDRESS is MS:NET/PO/MBX or its SMTP form)."""


@mailbox.command("add")
@click.argument("address")
@config_options
def add(address: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Create a mailbox and print its SMTP address."""
    config = get_config(config_path, data_dir)
    po = wiring.postoffice(config)
    try:
        parsed = po.map.parse(address)
        created = po.add(parsed)
    except (AddressError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    smtp = po.map.to_smtp(parsed)
    if created:
        events = wiring.open_events(config, stderr=False)
        events.emit(catalog.MAILBOX_ADDED, mailbox=parsed, address=smtp)
        events.close()
    else:
        click.echo(f"mailbox {parsed} already exists", err=True)
    click.echo(smtp)


@mailbox.command("list")
@config_options
def list_(config_path: Path | None, data_dir: Path | None) -> None:
    """List mailboxes with their SMTP addresses, message counts and sizes; after each
    postoffice's mailboxes, its outbox (where programs drop files to send) and how many
    files wait in it."""
    config = get_config(config_path, data_dir)
    po = wiring.postoffice(config)
    for (net, office), group in itertools.groupby(po.mailboxes(), lambda a: (a.net, a.po)):
        for address in group:
            try:
                info = po.info(address)
            except AddressError:
                continue
            click.echo(f"{address}\t{po.map.to_smtp(address)}\t{info.messages}\t{info.size}")
        outbox = po.outbox(net, office)
        if outbox.waiting is None:
            click.echo(f"MS:{net}/{office}\toutbox\t-\tmissing (mailbox add creates it)")
        else:
            click.echo(f"MS:{net}/{office}\toutbox\t{outbox.path}/\t{outbox.waiting} waiting")


@mailbox.command("remove")
@click.argument("address")
@click.option("--force", is_flag=True, help="Remove even if the mailbox holds mail.")
@config_options
def remove(address: str, force: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Remove a mailbox (refused while it holds mail, unless --force)."""
    config = get_config(config_path, data_dir)
    po = wiring.postoffice(config)
    try:
        parsed = po.map.parse(address)
        removed = po.remove(parsed, force=force)
    except (AddressError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    events = wiring.open_events(config, stderr=False)
    events.emit(catalog.MAILBOX_REMOVED, mailbox=parsed, messages=removed)
    events.close()
    click.echo(f"removed {parsed} ({removed} message(s))")
