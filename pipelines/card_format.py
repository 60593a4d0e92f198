"""How the cards write things: numbers, Markdown tables and fenced blocks, names of data and models fit for a public
card, and the redaction of anything that looks like an access token."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .folders import looks_like_hub_id
from .run_record import is_number

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{16,}")
_SECRET_KEY_RE = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_?key|auth|credentials?)$", re.I)


def redact(text: str) -> str:
    """Replace anything that looks like a Hugging Face token, and the token in the environment, with ``***``."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return _TOKEN_RE.sub("hf_***", text)


def redact_config(value, key: str = ""):
    """``value`` (a config) with the values of keys that name a secret (token, password, API key) redacted."""
    if key and _SECRET_KEY_RE.search(key) and value not in (None, "", False):
        return "<redacted>"
    if isinstance(value, dict):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v) for v in value]
    return value


def fmt(value) -> str:
    """A number or value as a short human string."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if value == int(value) and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def short_count(n: int | None) -> str:
    """A count as ``12.3M``, ``1.25K``."""
    if n is None:
        return "an unknown number of"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n / size >= 10 else f"{n / size:.2f}{unit}"
    return str(n)


def duration(seconds) -> str | None:
    """Seconds as ``42 s``, ``12.5 min`` or ``3.2 h``; ``None`` for anything that is not a finite number."""
    if not is_number(seconds) or not math.isfinite(seconds):
        return None
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; empty string when there are no rows."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def tidy(text: str) -> str:
    """Collapse runs of blank lines outside fenced code blocks (templates leave them where a section is empty)."""
    out: list[str] = []
    fence = None
    for line in text.split("\n"):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})", stripped)
            if match:
                fence = match.group(1)
            elif not stripped and (not out or not out[-1].strip()):
                continue
        elif stripped == fence:
            fence = None
        out.append(line)
    return "\n".join(out).strip() + "\n"


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a fenced code block whose fence is longer than any run of backticks in it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def data_name(value) -> str | None:
    """A Hub id as it is; a local path by its last component only (no local folders in a public card)."""
    if value in (None, ""):
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [str(v) if looks_like_hub_id(v) else (Path(str(v)).name or str(v)) for v in values]
    return ", ".join(names)

