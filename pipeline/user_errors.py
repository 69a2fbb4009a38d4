"""The failures a user can cause from stage two on: each ends a command with one line and exit 2.

The exit codes themselves are defined in :mod:`features.cli_common`.
"""

from features.cli_common import USER_ERRORS as EXTRACTION_USER_ERRORS
from pipeline.affine import HeadError
from pipeline.audit import AuditError
from pipeline.errors import ExportMismatch
from pipeline.head_maths import HeadTrainingError
from pipeline.submission import SubmissionError

USER_ERRORS: tuple[type[Exception], ...] = EXTRACTION_USER_ERRORS + (HeadTrainingError, HeadError, SubmissionError,
                                                                     AuditError, ExportMismatch)
