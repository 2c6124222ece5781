"""The live view of ``affsweep run``: one status line for the whole sweep.

On a terminal the line is redrawn in place (at most once a second) and the driver's own messages
(a trial finished, failed, is retried) print above it; elsewhere (a log file, CI, ``ray submit``'s
pipe) each message carries the counts as a prefix, and a heartbeat line comes at most once a minute
while nothing else happens. Counts come from Ray Tune's trial list at every step of its loop:
done / running / failed / pending, retries (failed attempts Ray restarted), elapsed and an ETA from
the trials finished in this run. Ray's own status table comes back with ``affsweep run --verbose``.
"""

from __future__ import annotations

import shutil
import sys
import time

from ray import tune


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _member_counts(trial, status: str) -> dict[str, int]:
    """What a Ray trial counts for, in trials: 1, or a pack's members (``pack/done`` of them finished,
    as its last report says; a pack ends TERMINATED only when all its members are done)."""
    config = getattr(trial, "config", None) or {}
    k = len(config["pack"]["members"]) if "pack" in config else 1
    if status == "TERMINATED":
        return {"done": k}
    if status in ("PENDING", "PAUSED"):
        return {"pending": k}
    if status not in ("RUNNING", "ERROR"):
        return {}
    done = min(int((getattr(trial, "last_result", None) or {}).get("pack/done", 0)), k) if "pack" in config else 0
    return {"done": done, ("failed" if status == "ERROR" else "running"): k - done}


class LiveView(tune.Callback):
    """A Tune callback that owns the console while the trials run; ``say`` prints a message."""

    def __init__(self, name: str, total: int, skipped: int = 0, say=print, stream=None, tty: bool | None = None,
                 refresh_s: float = 1.0, heartbeat_s: float = 60.0, clock=time.monotonic):
        """``say`` prints a plain line (``print``, or a test's collector); the in-place line is drawn on
        ``stream`` (stdout) only when ``say`` is ``print`` and ``stream`` is a terminal, or ``tty``."""
        self.name, self.total, self.skipped, self.emit = name, total, skipped, say
        self._stream = stream
        self.tty = (say is print and self.stream.isatty()) if tty is None else tty
        self.refresh_s, self.heartbeat_s, self.clock = refresh_s, heartbeat_s, clock
        self.start = clock()
        self.counts = {"done": 0, "running": 0, "failed": 0, "pending": total - skipped}
        self.retries = 0
        self._drawn = self._last_draw = self._last_line = 0.0
        self._shown = ""

    @property
    def stream(self):
        return self._stream or sys.stdout  # looked up when used: Tune pickles its callbacks

    def __getstate__(self):
        return {**self.__dict__, "_stream": None, "emit": None if self.emit is print else self.emit}

    def __setstate__(self, state):
        self.__dict__.update(state, emit=state["emit"] or print)

    # --- what is shown ----------------------------------------------------------------------------
    def status(self) -> str:
        c, elapsed = self.counts, self.clock() - self.start
        done_here = c["done"]
        left = c["running"] + c["pending"]
        eta = _clock(elapsed / done_here * left) if done_here and left else ("0:00" if not left else "?")
        retries = f" · {self.retries} retried" if self.retries else ""
        return (f"{self.name}: {c['done'] + self.skipped}/{self.total} done · {c['running']} running · "
                f"{c['failed']} failed · {c['pending']} pending{retries} · {_clock(elapsed)} elapsed · ETA {eta}")

    def say(self, message: str) -> None:
        if self.tty:
            self._clear()
            print(message, file=self.stream, flush=True)
            self._draw()
        else:
            self.emit(f"[{self.status()}] {message}" if message else message)
            self._last_line = self.clock()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self._shown = ""

    def _draw(self) -> None:
        width = shutil.get_terminal_size((120, 24)).columns - 1
        line = self.status()[:width]
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self._shown, self._last_draw = line, self.clock()

    # --- Tune's hooks -----------------------------------------------------------------------------
    def update(self, trials, ended=None, as_status: str = "") -> None:
        """Counts from Tune's trial list; ``ended`` (a trial a hook is announcing) counts as ``as_status``
        even if Tune has not set its status yet."""
        self.counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
        for t in trials:
            for what, n in _member_counts(t, as_status if t is ended else t.status).items():
                self.counts[what] += n
        self.retries = sum(getattr(t, "num_failures", 0) for t in trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.update(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.update(trials, trial, "ERROR")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.update(trials)

    def on_step_end(self, iteration, trials, **info):
        self.update(trials)
        now = self.clock()
        if self.tty and now - self._last_draw >= self.refresh_s:
            self._draw()
        elif not self.tty and now - max(self._last_line, self.start) >= self.heartbeat_s:
            self.say("running")

    def on_experiment_end(self, trials, **info):
        self.update(trials)
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._shown = ""
        else:
            self.say("all trials ended")
