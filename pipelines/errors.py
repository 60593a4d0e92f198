"""The one exception type for user errors.

Anything a user can cause (a missing file, a bad flag, a malformed record) is raised as ``UserError`` with one line
that names the problem and says what to do.  The CLI prints that line and exits non-zero; it never shows a traceback
for these.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
