"""The zoo's status line: bar, done/total, ok/mismatch/failed/skipped, running models, ETA."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """One status line: bar, done/total, ok/mismatch/failed/skipped, running models, ETA."""

    def __init__(self, total: int, jobs: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.jobs, self.stream, self.enabled = total, jobs, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.counts = {"ok": 0, "mismatch": 0, "failed": 0, "skipped": 0}
        self.running: dict = {}
        self.durations: list = []
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def start(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.monotonic()
            self._show(f"start {name}")

    def finish(self, name: str, status: str, seconds: float | None = None, skipped: str | None = None) -> None:
        """``skipped``: why the model was not run (then ``status`` is its recorded one)."""
        with self.lock:
            self.running.pop(name, None)
            self.counts["skipped" if skipped else status if status in self.counts else "failed"] += 1
            if seconds is not None and not skipped:
                self.durations.append(seconds)
            self._show(f"{name}: {f'skipped ({skipped}: {status})' if skipped else status}"
                       + (f" in {seconds:.0f} s" if seconds is not None and not skipped else ""))

    def _eta(self) -> str:
        left = self.total - self.done
        if not left:
            return "0s"
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        running_left = sum(max(0.0, mean - (now - t)) for t in self.running.values())
        queued = left - len(self.running)
        return _dur((running_left + queued * mean) / max(1, min(self.jobs, left)))

    def _show(self, event: str) -> None:
        if not self.enabled:   # one plain line per event, no status line
            self.stream.write(f"{event}\n")
            self.stream.flush()
            return
        width = 20
        fill = int(width * self.done / max(1, self.total))
        c = self.counts
        line = (f"zoo [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} ok {c['ok']} "
                f"mismatch {c['mismatch']} failed {c['failed']} skipped {c['skipped']} | running: "
                f"{', '.join(self.running) or '-'} | {_dur(time.monotonic() - self.t0)} ETA {self._eta()}")
        if self.tty:
            self.stream.write(f"\r\033[K{event}\n{line}")
        else:
            self.stream.write(f"{event}\n{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _dur(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
