"""Stage one's errors that a command turns into one line, kept apart from the torch modules that raise them.

Every command's exit-code table (:mod:`features.cli_common`) names these types, and a
command that never touches a backbone (``verify``, the heads) must not load torch to do so.
"""


class BackboneError(Exception):
    """Unknown backbone or unusable weights argument; ``str(exc)`` is a one-line reason."""


class ExtractionError(Exception):
    """Extraction produced nothing usable; ``str(exc)`` says why."""
