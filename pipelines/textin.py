"""Text from the command line and from stdin, decoded as UTF-8 with one clear line for anything else.

Python hands undecodable command-line bytes to the program as lone surrogates (``surrogateescape``), which break
later at tokenisation with a ``TypeError``; stdin either raises ``UnicodeDecodeError`` mid-read or (under a C locale)
carries the same surrogates.  Both are caught here, at the door, naming the argument or the input line.
"""

from __future__ import annotations

import sys

from .errors import UserError


def _bad_char(text: str) -> tuple[int, str] | None:
    """``(position, description)`` of the first character of ``text`` that is not encodable UTF-8, else None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            return exc.start, f"byte 0x{code - 0xDC00:02x}"
        return exc.start, f"a lone surrogate U+{code:04X}"


def check_argv(argv: list[str]) -> None:
    """Every command-line argument must be UTF-8 text; the first that is not is named (by its flag)."""
    for index, arg in enumerate(argv):
        if _bad_char(arg) is None:
            continue
        flag, eq, value = arg.partition("=")
        if arg.startswith("--") and eq and _bad_char(flag) is None:
            name, text = f"the value of {flag}", value
        elif arg.startswith("-") and len(arg) > 1:
            name, text = f"option {index + 1}", arg
        elif index > 0 and argv[index - 1].startswith("-") and "=" not in argv[index - 1]:
            name, text = f"the value of {argv[index - 1]}", arg
        else:
            name, text = f"argument {index + 1}", arg
        check_text(text, name)


def check_text(text: str, where: str) -> str:
    bad = _bad_char(text)
    if bad is not None:
        position, what = bad
        raise UserError(f"{where} is not UTF-8 text ({what} at character {position + 1}): pass UTF-8 text")
    return text


def read_line(stream=None, lineno: int = 0) -> str:
    """One line of ``stream`` (default stdin) as text; '' at end of input.  Bytes that are not UTF-8 are one line
    naming the input line."""
    stream = sys.stdin if stream is None else stream
    where = f"line {lineno} of the input (stdin)" if lineno else "the input (stdin)"
    raw = getattr(stream, "buffer", None)
    if raw is not None:
        data = raw.readline()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start + 1}): pass UTF-8 text"
            ) from None
    try:
        line = stream.readline()
    except UnicodeDecodeError as exc:
        raise UserError(f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): pass UTF-8 text") from None
    return check_text(line, where)


def read_all(stream=None) -> str:
    """All of ``stream`` (default stdin) as text, checked as :func:`read_line` does."""
    lines, number = [], 0
    while True:
        number += 1
        line = read_line(stream, number)
        if not line:
            return "".join(lines)
        lines.append(line)
