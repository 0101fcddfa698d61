"""``ctrlplane completion SHELL``: the shell's completion script, from click."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_CTRLPLANE_COMPLETE"
"""The variable click's completion script sets when it asks ``ctrlplane`` for completions."""


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(ctrlplane completion bash)"   in ~/.bashrc
    zsh:  eval "$(ctrlplane completion zsh)"    in ~/.zshrc
    fish: ctrlplane completion fish > ~/.config/fish/completions/ctrlplane.fish
    """
    from click.shell_completion import get_completion_class

    from ctrlplane.cli import main

    cls = get_completion_class(shell)
    # Choice has checked the name: click has a class for each of SHELLS.
    assert cls is not None
    click.echo(cls(main, {}, "ctrlplane", COMPLETE_VAR).source())
