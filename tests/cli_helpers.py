"""Helpers shared by the CLI tests: run `dsa` in process and check success or a one-line user error."""

from __future__ import annotations

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def dsa(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exception is None
    return result.stdout


def user_error(result, *fragments: str) -> str:
    """Exit code 1, exactly one line on stderr starting with 'error:', no traceback, nothing on stdout."""
    assert result.exit_code == 1, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]
