"""The ``dsa`` command line (typer): the app, its one error convention, and its commands (``dsa.commands``).

Data goes to stdout, diagnostics to stderr. One convention for everything a user can get wrong, bad option
values and unknown options included: one line ``error: ...`` on stderr and exit code 1. Ctrl-C ends with exit
code 130 and a line saying what was kept. Warnings (e.g. random weights) are lines starting ``warning:``.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

import dsa.commands  # noqa: F401 -- registers the commands
from dsa.commands._common import COMMANDS

APP_HELP = (
    "dsa: hardware-aware depth compression for PyTorch CNNs. Plan which activations to remove for a latency "
    "target (predicted or measured), merge the now-linear layers into single convolutions (verified), finetune, "
    "export and measure. Bad input ends with one 'error: ...' line and exit code 1; Ctrl-C with exit code 130."
)


class _OneLineErrors(TyperGroup):
    """click reports bad option values with a usage box and exit code 2; dsa reports every user error the same
    way: one ``error:`` line and exit code 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's usage errors: bad values, unknown options, missing options
            if type(e).__name__ == "NoArgsIsHelpError":  # `dsa` alone: the help, as a request for it
                typer.echo(e.format_message())
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(1)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help=APP_HELP,
    pretty_exceptions_enable=False,
)


# the order of `dsa --help`
_ORDER = (
    "models", "analyze", "plan", "pareto", "merge", "bench", "devices", "evaluate", "roofline", "report", "profile",
    "calibrate", "validate", "train", "eval", "importance",
)  # fmt: skip
for _name, _fn in sorted(COMMANDS, key=lambda c: _ORDER.index(c[0]) if c[0] in _ORDER else len(_ORDER)):
    app.command(_name)(_fn)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
