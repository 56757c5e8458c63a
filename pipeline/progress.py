"""Live progress for annotation runs: videos done / failed, videos per second, ETA.

One class for every executor. With ``enabled=True`` it draws a ``rich`` progress bar; with
``enabled=False`` it logs a line at most every ``log_every_s`` seconds (and at the end), so a
cluster job's log stays readable. Videos of shards completed by an earlier run count as done
but not in the rate or the ETA (``skipped=True``).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("pite.pipeline")


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` / ``4:05`` style, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress:
    """Context manager: ``with RunProgress(total) as p: p.advance(written=3, failed=1)``.

    Args:
        total: videos in the run.
        enabled: draw a live bar (else log lines).
        description: label of the bar and the log lines.
        log_every_s: with ``enabled=False``, the least seconds between two log lines.
    """

    def __init__(self, total: int, enabled: bool = True, description: str = "annotate", log_every_s: float = 10.0):
        self.total, self.enabled, self.description = total, enabled, description
        self.log_every_s = log_every_s
        self.written = self.failed = self.skipped = 0
        self._bar = self._task = None
        self._t0 = time.perf_counter()
        self._last_log = -float("inf")

    @property
    def done(self) -> int:
        return self.written + self.failed

    def rate(self) -> float:
        """Videos per second processed by this run (skipped shards excluded)."""
        return (self.done - self.skipped) / max(time.perf_counter() - self._t0, 1e-9)

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def detail(self) -> str:
        return (f"ok {self.written}  failed {self.failed}  {self.rate():.2f} videos/s  "
                f"ETA {format_eta(self.eta_s())}")

    def __enter__(self) -> "RunProgress":
        self._t0 = time.perf_counter()
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, detail="")
        return self

    def advance(self, written: int = 0, failed: int = 0, skipped: bool = False) -> None:
        """Count ``written`` + ``failed`` more videos as done (``skipped``: done by an earlier run)."""
        self.written += written
        self.failed += failed
        if skipped:
            self.skipped += written + failed
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, detail=self.detail())
        else:
            now = time.perf_counter()
            if now - self._last_log >= self.log_every_s or self.done >= self.total:
                self._last_log = now
                log.info("%s: %d/%d videos (%s)", self.description, self.done, self.total, self.detail())

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
