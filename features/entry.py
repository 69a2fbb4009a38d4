"""How a command-line entry point starts and ends, whatever moment a Ctrl-C picks.

- Ctrl-C while the libraries load: one line, exit 130.
- Ctrl-C anywhere outside a command's own handling (option parsing, a lazy import, the
  closing summary): the same. click, left to itself, would print "Aborted!" and exit 1.
- Once the command has finished, its outputs closed and its lines flushed, the process
  ends at once (``os._exit``) instead of tearing the interpreter down: with torch loaded
  that teardown (torch's ``atexit`` hooks, then freeing every module) took 1.5 to 2 s, and
  a Ctrl-C within it printed a traceback or killed the process by SIGINT. Where child
  processes are still alive (joblib's workers), the ordinary exit runs so that they are
  shut down; Ctrl-C is then ignored for that moment.

Only the standard library, click and :mod:`features.interrupt` (standard library only) are
imported here, so this module loads first. A Ctrl-C that a library import swallows is still
remembered, and stops the run at its first batch boundary.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import NoReturn

import click

from features.interrupt import remember_interrupts

EXIT_INTERRUPTED = 130  # in the exit-code table of features.cli_common


def _interrupted(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def run_command(command: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> NoReturn:
    """Run a click command and end the process with its exit code; see the module docstring.

    Parameters
    ----------
    command : click.Command
        A command or group.
    args : list of str, optional
        Its arguments (``sys.argv[1:]`` when omitted).
    prog_name : str, optional
        The name shown in usage lines.
    """
    remember_interrupts()
    try:
        try:
            result = command.main(args, prog_name=prog_name, standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except click.Abort:  # click's form of a KeyboardInterrupt it met
            raise KeyboardInterrupt from None
        except click.ClickException as exc:  # a usage error: click's own message and exit code
            exc.show()
            code = exc.exit_code
        except SystemExit as exc:  # the commands' own exits (features.cli_common.fail)
            code = exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        _ignore_interrupts()  # the work is done: nothing is left to interrupt
    _end(code)


def _ignore_interrupts() -> None:
    """Ignore SIGINT from now on.

    ``signal.signal`` first runs the handler of a signal still pending, so a Ctrl-C that lands
    just then raises ``KeyboardInterrupt`` from the old handler, out of this very call. The
    command has finished by then: the interruption is dropped and the swap tried again.
    """
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def _end(code: int | str | None) -> NoReturn:
    """Flush the output streams and end the process without the interpreter's teardown."""
    if isinstance(code, str):  # sys.exit("message"), as Python would report it
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    if "multiprocessing" in sys.modules and sys.modules["multiprocessing"].active_children():
        sys.exit(code)  # the ordinary exit shuts joblib's workers down; SIGINT stays ignored meanwhile
    os._exit(code)


def run_entry_point(module: str, attribute: str = "main") -> None:
    """Import ``module`` (where the slow library imports happen), then call its ``attribute``.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"features.cli"``.
    attribute : str
        A function of no arguments that ends in :func:`run_command`.
    """
    remember_interrupts()
    try:
        dispatch = getattr(importlib.import_module(module), attribute)
    except KeyboardInterrupt:
        _interrupted("interrupted before anything was started")
    dispatch()
