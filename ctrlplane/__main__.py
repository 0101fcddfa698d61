"""``python -m ctrlplane``: the same as the ``ctrlplane`` command."""

from ctrlplane.cli import main

main()
