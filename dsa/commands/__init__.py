"""The command line's commands, one module per group; ``cli.py`` (the entry point) registers them on the typer
app. These modules and cli.py are the only ones that import typer or rich."""

from dsa.commands import latency, measuring, merging, network, planning, quantizing, training  # noqa: F401
