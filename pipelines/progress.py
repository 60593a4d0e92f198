"""Progress for people and for log files: a tqdm bar on a terminal, plain lines when stderr goes to a file.

A batch job (nohup, Slurm, ``accelerate launch > log``) reads progress later in a file, where a bar's carriage
returns make one enormous line; there each report is one line, ``DESC: step N/TOTAL | key value | ... | eta 1m02s``,
at most every ``every`` steps (and at the end).
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """``update(n, **shown)`` after each step; ``close()`` at the end.  ``disable`` shows nothing."""

    def __init__(self, total: int, desc: str, *, unit: str = "step", initial: int = 0, every: int = 1,
                 disable: bool = False, stream=None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, max(1, every)
        self.done = self.started_at_count = initial
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.bar = None
        self.disabled = disable
        if not disable and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **shown) -> None:
        self.done += n
        if self.disabled:
            return
        if self.bar is not None:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
        elif self.done % self.every < n or self.done >= self.total:
            rate = (self.done - self.started_at_count) / max(time.monotonic() - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            parts = [f"{self.desc}: {self.unit} {self.done}/{self.total}", *(f"{k} {v}" for k, v in shown.items()),
                     f"eta {_duration(eta)}"]
            print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
