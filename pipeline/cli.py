"""``tlcache``: every step of the pipeline as one command with subcommands.

``run_extract.py``, ``run_head.py`` and ``python -m pipeline.fuse`` remain as the thin
entry points of each stage; they run the same commands.
"""

from __future__ import annotations

import click

from features.cli import extract_command, verify
from features.cli_common import CONTEXT_SETTINGS
from features.entry import run_command
from pipeline.fit_cli import fit_command
from pipeline.fuse import main as fuse_command
from pipeline.head_cli import audit, fit, predict
from pipeline.predict import main as predict_images


@click.group(context_settings=CONTEXT_SETTINGS)
def tlcache() -> None:
    """Transfer learning on cached backbone features: extract once, train heads in seconds, fuse, export."""


tlcache.add_command(extract_command, "extract")
tlcache.add_command(verify, "verify")
tlcache.add_command(fit, "head")
tlcache.add_command(fit_command, "fit")
tlcache.add_command(predict, "predict-features")
tlcache.add_command(audit, "audit")
tlcache.add_command(fuse_command, "fuse")
tlcache.add_command(predict_images, "predict")


def main() -> None:
    """Console-script entry point (Ctrl-C handled as in ``features.entry``)."""
    run_command(tlcache, prog_name="tlcache")


if __name__ == "__main__":
    main()
