"""The one exception type for user errors, and the small helpers that word its messages.

Anything a user can cause (a missing file, a bad flag, a malformed record, bytes that are not UTF-8) is raised as
``UserError`` with one line that names the problem and says what to do.  The CLI prints that line and exits non-zero;
it never shows a traceback for these.
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


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (its type's name when it has none), cut to ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]


def json_error(exc) -> str:
    """``msg at line L, column C`` for a ``json.JSONDecodeError`` (json's own messages may end in 'at', e.g.
    'Unterminated string starting at')."""
    msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
    return f"{msg} at line {exc.lineno}, column {exc.colno}"


def _bad_char(text: str) -> tuple[int, str] | None:
    """``(position, description)`` of the first character of ``text`` that is not encodable UTF-8, else None.

    Python hands undecodable command-line bytes (and stdin under a C locale) to the program as lone surrogates
    (``surrogateescape``), which would break later at tokenisation with a ``TypeError``."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            return exc.start, f"byte 0x{code - 0xDC00:02x}"
        return exc.start, f"a lone surrogate U+{code:04X}"


def check_text(text: str, where: str) -> str:
    """``text`` itself when it is UTF-8 text, else one line naming ``where`` it came from."""
    bad = _bad_char(text)
    if bad is not None:
        position, what = bad
        raise UserError(f"{where} is not UTF-8 text ({what} at character {position + 1}): pass UTF-8 text")
    return text
