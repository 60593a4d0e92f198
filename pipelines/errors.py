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


def describe_type(value) -> str:
    """What a value is, in words with the right article, for messages: 'a number (5)', 'an object', 'null'."""
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"a true/false value ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
