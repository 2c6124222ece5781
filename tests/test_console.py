"""The live view of ``affsweep run``: the counts, ETA and retries it shows, in place on a terminal and
as prefixed plain lines elsewhere (driven with stand-in trials and a hand-set clock)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from orchestrator.console import LiveView


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def trials(*status, failures=()):
    return [SimpleNamespace(status=s, num_failures=(failures[i] if i < len(failures) else 0))
            for i, s in enumerate(status)]


def test_plain_lines_carry_counts_eta_and_retries():
    said, clock = [], Clock()
    view = LiveView("demo", total=6, skipped=2, say=said.append, clock=clock)
    ts = trials("RUNNING", "RUNNING", "PENDING", "PENDING", failures=(1,))
    view.on_step_end(0, ts)
    clock.t += 30  # one trial finished after 30 s; 3 left (1 running + 2 pending) -> ETA 90 s
    ts[0].status = "RUNNING"
    view.on_trial_complete(0, ts, ts[1])
    view.say("trial b done")
    assert said == ["[demo: 3/6 done · 1 running · 0 failed · 2 pending · 1 retried · 0:30 elapsed · ETA 1:30] "
                    "trial b done"]
    ts[1].status = "TERMINATED"
    view.on_trial_error(0, ts, ts[2])
    assert view.counts == {"done": 1, "failed": 1, "running": 1, "pending": 1}


def test_heartbeat_at_most_once_a_minute_when_not_a_terminal():
    said, clock = [], Clock()
    view = LiveView("demo", total=2, say=said.append, clock=clock)
    ts = trials("RUNNING", "PENDING")
    for _ in range(50):  # Tune's loop steps many times a second
        clock.t += 1
        view.on_step_end(0, ts)
    assert said == []
    clock.t += 10
    view.on_step_end(0, ts)
    assert len(said) == 1 and said[0].endswith("] running") and "ETA ?" in said[0]


def test_terminal_line_is_redrawn_in_place_and_messages_print_above_it():
    stream, clock = io.StringIO(), Clock()
    view = LiveView("demo", total=2, stream=stream, tty=True, clock=clock)
    ts = trials("RUNNING", "RUNNING")
    clock.t += 1.5
    view.on_step_end(0, ts)
    clock.t += 0.2
    view.on_step_end(0, ts)  # within the refresh interval: not redrawn
    assert stream.getvalue().count("\r\x1b[2K") == 1
    view.say("trial a done")
    ts[0].status = "TERMINATED"
    ts[1].status = "TERMINATED"
    view.on_experiment_end(ts)
    out = stream.getvalue()
    assert "\r\x1b[2Ktrial a done\n" in out  # the live line is cleared, the message printed, the line redrawn
    assert out.endswith("demo: 2/2 done · 0 running · 0 failed · 0 pending · 0:01 elapsed · ETA 0:00\n")
