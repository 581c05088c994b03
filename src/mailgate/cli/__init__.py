"""cli: the `mailgate` command."""
