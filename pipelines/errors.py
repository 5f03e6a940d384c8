"""One error type for user mistakes.

The CLI prints ``str(err)`` as a single line and exits non-zero; tracebacks only with ``--debug``.
Messages name the file and the fix, e.g. ``"clips/a.npy: actions have 12 rows but the video has
10 frames. Give T or T-1 rows, one per frame."``.
"""


class V2WError(Exception):
    """A problem with the user's input or environment (not a bug in v2w)."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
