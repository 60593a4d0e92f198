"""Text from stdin, decoded as UTF-8 with one clear line for anything else (``chat`` and ``classify -`` read it).

stdin either raises ``UnicodeDecodeError`` mid-read or (under a C locale) carries lone surrogates; both are caught
here, at the door, naming the input line.
"""

from __future__ import annotations

import sys

from ..errors import UserError, check_text


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
