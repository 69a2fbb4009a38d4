"""How a command-line entry point starts and ends, whatever moment a Ctrl-C picks.

- Ctrl-C while the libraries load: one line, exit 130.
- Ctrl-C outside a command's own handling (option parsing, the closing summary): the same.
- Ctrl-C once the command has finished: ignored. The interpreter's shutdown (torch's
  ``atexit`` hooks among it) takes a noticeable moment, and a KeyboardInterrupt raised
  there would print a traceback, or the default handler, restored during shutdown, would
  kill a process whose work is already done and on disk.

Only the standard library is imported here, so this module loads before anything else.
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Callable, NoReturn

EXIT_INTERRUPTED = 130  # the same code as ``features.cli_common.EXIT_INTERRUPTED``


def _interrupted(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def guard_interrupts(command: Callable[[], object]) -> None:
    """Run ``command`` (a click command or any callable); see the module docstring for Ctrl-C.

    Parameters
    ----------
    command : callable
        Called with no arguments; it may end with ``SystemExit``, which passes through.
    """
    try:
        command()
    except KeyboardInterrupt:
        _interrupted("interrupted")
    finally:
        # Python keeps an ignored SIGINT ignored through shutdown (it restores only handlers it set itself).
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_entry_point(module: str, attribute: str = "main") -> None:
    """Import ``module`` (where the slow library imports happen), then run its ``attribute`` guarded.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"features.cli"``.
    attribute : str
        The callable in it to run.
    """
    try:
        command = getattr(importlib.import_module(module), attribute)
    except KeyboardInterrupt:
        _interrupted("interrupted before anything was started")
    guard_interrupts(command)
