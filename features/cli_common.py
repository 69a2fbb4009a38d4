"""What every command shares: its options, and how its errors become one line and an exit code.

Exit codes, the same for every command:

- 0: done;
- 1: nothing readable (no image in the dataset or among the inputs could be decoded);
- 2: bad input, a damaged file, or an output another run is writing;
- 4: the output could not be written (disk full, quota, I/O error; rerun to resume);
- 130: interrupted (rerun to resume).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, NoReturn

import click

from features.data import DatasetError
from features.entry import EXIT_INTERRUPTED
from features.errors import BackboneError, ExtractionError
from features.interrupt import Interrupted
from features.locking import LockError
from features.store import FeatureFileError
from features.writer import WriteFailed

EXIT_NOTHING_READABLE = 1
EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 4

# Failures a user can cause in stage one; stage two adds its own (pipeline.cli_errors).
USER_ERRORS: tuple[type[Exception], ...] = (DatasetError, BackboneError, FeatureFileError, LockError, ValueError)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def exit_codes(user_errors: tuple[type[Exception], ...], interrupted: str) -> Iterator[None]:
    """Turn the errors of the block into one ``error:`` line and the module's exit codes.

    Parameters
    ----------
    user_errors : tuple of exception types
        Errors that mean bad input (exit 2).
    interrupted : str
        The line printed on Ctrl-C or SIGTERM (exit 130), e.g. how to resume.
    """
    try:
        yield
    except WriteFailed as exc:
        fail(str(exc), EXIT_WRITE_FAILED)
    except ExtractionError as exc:  # no image of the dataset could be decoded
        fail(str(exc), EXIT_NOTHING_READABLE)
    except user_errors as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except (Interrupted, KeyboardInterrupt):
        fail(interrupted, EXIT_INTERRUPTED)


# ---------------------------------------------------------------------------- shared options

Decorator = Callable[[Callable], Callable]
MIN_SIDE = 32  # features.backbones.MIN_IMAGE_SIZE, not imported here (that module loads torch); a test ties them


def _auto_or(value: str, parse: Callable[[str], float | int], kind: str) -> str | float | int:
    if value == "auto":
        return value
    try:
        return parse(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor {kind}") from None


def auto_or_positive(_ctx: click.Context, param: click.Parameter, value: str) -> str | float:
    """click callback for options that take ``auto`` or a positive number (``--C``, ``--lr``).

    Raises
    ------
    click.BadParameter
    """
    number = _auto_or(value, float, "a number")
    if number != "auto" and not number > 0:  # also refuses nan
        raise click.BadParameter(f"{param.name} must be positive")
    return number


def auto_or_input_size(_ctx: click.Context, _param: click.Parameter, value: str) -> str | int:
    """click callback for ``--input-size``: ``auto``, or a whole number of pixels no smaller than 32.

    Raises
    ------
    click.BadParameter
    """
    side = _auto_or(value, int, "a whole number of pixels")
    if side != "auto" and side < MIN_SIDE:
        raise click.BadParameter(f"{side} is below {MIN_SIDE} px")
    return side


def device_option() -> Decorator:
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)


def precision_option(help_text: str) -> Decorator:
    return click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                        show_default=True, help=help_text)


def seed_option(help_text: str | None = None) -> Decorator:
    return click.option("--seed", default=0, show_default=True, type=int, help=help_text)


def batch_size_option(default: int | None) -> Decorator:
    """``--batch-size``; ``None``: chosen by device (:func:`features.devices.default_batch_size`)."""
    if default is None:
        return click.option("--batch-size", default=None, type=click.IntRange(min=1),
                            help="Images per forward pass [default: 16 on the CPU, 32 on a GPU; a resumed run: "
                                 "the batch its file was started with].")
    return click.option("--batch-size", default=default, show_default=True, type=click.IntRange(min=1))


def workers_option(default: int | None, help_text: str) -> Decorator:
    return click.option("--workers", type=click.IntRange(min=0), default=default, show_default=default is not None,
                        help=help_text)


def image_size_option() -> Decorator:
    return click.option("--image-size", type=click.IntRange(min=MIN_SIDE), default=None,
                        help="Side in pixels of the square crop fed to the network; the resize before the crop keeps "
                             "its ratio to it. Larger than the weights' own size often pays for frozen features "
                             "(see the README) [default: the weights' own size, e.g. 224 for efficientnet_lite0].")


def quiet_option() -> Decorator:
    return click.option("--quiet", is_flag=True, help="No progress line.")


def default_features_path(data_root: str, backbone: str, image_size: int | None = None) -> str:
    """``ROOTNAME-BACKBONE.h5`` in the working directory, ``ROOTNAME-BACKBONE-288px.h5`` with an explicit
    ``--image-size 288``: the feature file name when ``--out`` is not given (another size gets another file)."""
    size = "" if image_size is None else f"-{image_size}px"
    return f"{os.path.basename(os.path.normpath(data_root))}-{backbone}{size}.h5"
