"""Allow `python -m mailgate`."""

from mailgate.cli.main import main

main()
