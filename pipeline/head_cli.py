"""``run_head.py``: train a head (default), ``predict`` with one, or ``audit`` a dataset; also ``tlcache head``,
``tlcache predict-features`` and ``tlcache audit``."""

from __future__ import annotations

import sys

import click

from features.cli_common import CONTEXT_SETTINGS, auto_or_positive, exit_codes, fail, seed_option
from features.entry import run_command
from pipeline.audit import AuditConfig, audit_lines, run_audit
from pipeline.predict_features import predict_split
from pipeline.streaming import parse_memory
from pipeline.train_head import HeadConfig, summary_lines, train_head
from pipeline.user_errors import USER_ERRORS

_INTERRUPTED = "interrupted; nothing was written"


def _parse_memory(_ctx, _param, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--features", "features_path", required=True, help="Complete feature file from run_extract.py.")
@click.option("--clf", type=click.Choice(["svm", "logreg", "linear"]), default="logreg", show_default=True)
@click.option("--C", "C", default="auto", show_default=True, callback=auto_or_positive, help="Inverse regularisation, or auto: chosen by K-fold CV on train.")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(min=2), help="Folds of the C sweep.")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--init", type=click.Choice(["none", "imagenet"]), default="none", show_default=True,
              help="linear only: start from the backbone's own ImageNet rows for matching class names.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=0),
              help="linear only: L-BFGS iterations (0 keeps the initial map).")
@click.option("--kernel", type=click.Choice(["linear", "rbf", "poly"]), default="linear", show_default=True,
              help="svm only; non-linear kernels cannot be fused into the backbone.")
@seed_option()
@click.option("--n-jobs", default=None, type=int,
              help="joblib workers for the C sweep (-1: all cores) [default: 1 under 1M training values, else all].")
@click.option("--max-memory", default=None, callback=_parse_memory,
              help="Stream the training rows in chunks when they exceed this (512M, 4G) [default: half of RAM].")
@click.option("--passes", default=10, show_default=True, type=click.IntRange(min=1),
              help="Streaming mode only: passes of minibatch training over the rows.")
@click.option("--exclude", default=None, help="File of dataset-relative paths (exclude.txt of an audit) whose training rows are left out.")
@click.option("--out", "out_dir", default="head", show_default=True, help="HEAD_DIR to write.")
def fit(features_path, clf, C, cv, class_weight, init, epochs, kernel, seed, n_jobs, max_memory, passes, exclude,
        out_dir) -> None:
    """Train a classifier on cached features (stage two). `run_head.py predict --help` applies one."""
    cfg = HeadConfig(features_path=features_path, out_dir=out_dir, clf=clf, C=C, cv=cv,
                     class_weight=None if class_weight == "none" else class_weight, init=init, epochs=epochs,
                     seed=seed, n_jobs=n_jobs, kernel=kernel, max_memory=max_memory, passes=passes, exclude=exclude)
    with exit_codes(USER_ERRORS, _INTERRUPTED):
        result = train_head(cfg)
    click.echo("\n".join(summary_lines(result, out_dir)))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--head", "head_dir", required=True, help="HEAD_DIR written by run_head.py.")
@click.option("--features", "features_path", required=True, help="Feature file made like the head's training features.")
@click.option("--split", default="val", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["rows", "submission"]), default="rows", show_default=True,
              help="rows: path, true, predicted, prob_<class>...; submission: an id column plus one probability "
                   "column per class.")
@click.option("--template", default=None,
              help="submission only: a sample submission whose id column, class columns and row order are kept.")
@click.option("--out", "out_csv", default=None,
              help="CSV to write [default: none for rows, submission.csv for --format submission].")
def predict(head_dir, features_path, split, fmt, template, out_csv) -> None:
    """Predict the rows of one split of a feature file with a trained head."""
    if fmt == "submission" and out_csv is None:
        out_csv = "submission.csv"
    try:
        with exit_codes(USER_ERRORS, _INTERRUPTED):
            result = predict_split(head_dir, features_path, split, out_csv, fmt, template)
    except OSError as exc:
        fail(f"cannot write {out_csv}: {exc.strerror or exc}")
    written = f", written to {out_csv}" if out_csv else ""
    accuracy = "unlabeled, no accuracy" if result["accuracy"] is None else f"accuracy {result['accuracy']:.4f}"
    click.echo(f"{split}: {result['n']} rows, {accuracy}{written}")
    for note in result["notes"]:
        click.echo(note)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--features", "features_path", required=True, help="Complete feature file from run_extract.py.")
@click.option("--head", "head_dir", default=None, help="HEAD_DIR whose classifier and C to use [default: logreg, C by CV].")
@click.option("--out", "out_dir", required=True, help="AUDIT_DIR to write (audit.csv, audit.json, exclude.txt, index.html).")
@click.option("--overwrite", is_flag=True, help="Replace the audit files in an existing AUDIT_DIR.")
@click.option("--data", "data_root", default=None, help="Images' root [default: the one recorded in the feature file].")
@click.option("--neighbours", default=15, show_default=True, type=click.IntRange(min=1),
              help="Nearest training images used for label votes and the outlier distance.")
@click.option("--top", default=48, show_default=True, type=click.IntRange(min=1), help="Images per report section.")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(min=2), help="Folds of the out-of-fold probabilities.")
@seed_option()
@click.option("--n-jobs", default=None, type=int, help="joblib workers for the C sweep (as for fitting).")
def audit(features_path, head_dir, out_dir, overwrite, data_root, neighbours, top, cv, seed, n_jobs) -> None:
    """Audit a dataset from its features: label errors, duplicates and leaks, outliers, unreadable files."""
    cfg = AuditConfig(features_path=features_path, out_dir=out_dir, head_dir=head_dir, data_root=data_root,
                      overwrite=overwrite, cv=cv, seed=seed, neighbours=neighbours, top=top, n_jobs=n_jobs)
    with exit_codes(USER_ERRORS, _INTERRUPTED):
        result = run_audit(cfg)
    click.echo("\n".join(audit_lines(result, out_dir)))


def main(args: list[str] | None = None) -> None:
    """Dispatch: ``predict ...``, ``audit ...`` or ``fit ...``; anything else is ``fit`` (so ``--clf svm ...`` works)."""
    args = sys.argv[1:] if args is None else args
    subcommands = {"predict": predict, "audit": audit, "fit": fit}
    if args and args[0] in subcommands:
        run_command(subcommands[args[0]], args[1:], prog_name=f"run_head.py {args[0]}")
    run_command(fit, args, prog_name="run_head.py")


if __name__ == "__main__":
    main()
