"""``affsweep run SWEEP.yaml --until-decided``: seeds added only where a hypothesis is undecided.

With ``analysis.looks: [n1, n2, ...]`` the sweep runs look by look (docs/methods.md §16):

1. look 1 runs the whole grid on the first ``n1`` seeds of ``grid.seed`` (the order written);
2. the looks are replayed on the finished trials (:func:`analysis.looks.sequential_state`, the exact
   group-sequential sign-flip test of :mod:`analysis.sequential`; Holm's closure within a family);
3. the next look runs only the trials of the hypotheses still undecided — both conditions of
   their contrast, in their stratum, on the next look's seeds — and a decided hypothesis gets no
   more seeds; until every hypothesis is decided or the last look has run.

Each look is one ordinary :func:`orchestrator.driver.run_sweep` of the plan filtered to the trials
done so far plus that look's: the content-addressed trial ids make finished trials skip, MLflow runs
are found by tag, and an interrupted sequential run resumes by running the same command. The report
written after each look says which look decided each hypothesis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.looks import SequentialState, decision_word, differences_in_seed_order, sequential_state
from orchestrator import sweep_dir as record
from orchestrator.expand import SweepPlan, seed_order, trial_frame

__all__ = ["UntilDecidedOutcome", "hypothesis_trials", "run_until_decided", "state_of"]


@dataclass
class UntilDecidedOutcome:
    looks_run: list[int] = field(default_factory=list)  # 1-based looks whose trials were run
    trials_per_look: list[int] = field(default_factory=list)  # trials the look's plan held (done ones included)
    states: list[SequentialState] = field(default_factory=list)  # after each look
    last: object | None = None  # the last look's driver.SweepOutcome
    stopped: str | None = None  # why the loop stopped early (failed or interrupted trials)

    @property
    def exit_code(self) -> int:
        return self.last.exit_code if self.last is not None else 1


def hypothesis_trials(plan: SweepPlan) -> list[dict[int, tuple[str, str]]]:
    """Per declared hypothesis (``plan.analysis.hypotheses()`` order): seed -> (trial id of A, of B)."""
    from analysis.hypotheses import resolve

    frame = trial_frame(plan)
    ids = frame["trial_id"].tolist()
    return [{int(p.seed): (ids[p.row_a], ids[p.row_b]) for p in resolve(h, frame, plan.axes).pairs}
            for h in plan.analysis.hypotheses()]


def state_of(plan: SweepPlan, sweep_dir: Path) -> SequentialState:
    """The sequential decisions on the trials of ``plan`` finished in ``sweep_dir``."""
    from analysis.hypotheses import evaluate_hypotheses

    metrics = {}
    for t in plan.trials:
        result = record.read_result(record.trial_dir(sweep_dir, t.trial_id))
        if result is not None:
            metrics[t.trial_id] = {k: v for k, v in result.items() if k not in ("trial_id", "seed", "status")
                                   and k not in t.axes and isinstance(v, int | float) and not isinstance(v, bool)}
    done = dataclasses.replace(plan, trials=[t for t in plan.trials if t.trial_id in metrics])
    a, order = plan.analysis, seed_order(plan)
    if not done.trials:
        return sequential_state(a, [[] for _ in a.hypotheses()])
    results = evaluate_hypotheses(a, trial_frame(done, metrics), plan.axes)
    return sequential_state(a, [differences_in_seed_order(r.seeds, r.differences, order) for r in results])


def _done_ids(plan: SweepPlan, sweep_dir: Path) -> set[str]:
    return {t.trial_id for t in plan.trials if record.read_result(record.trial_dir(sweep_dir, t.trial_id))}


def run_until_decided(plan: SweepPlan, sweep_dir: Path, run: Callable,
                      say: Callable[[str], None] = print, **run_kwargs) -> UntilDecidedOutcome:
    """Run ``plan`` look by look (see the module docstring). ``run(plan, sweep_dir, say=..., **run_kwargs)``
    runs one filtered plan and returns an outcome with ``exit_code``: the driver passes its
    :func:`orchestrator.driver.run_sweep` (so this module does not import the driver); tests a fake."""
    a = plan.analysis
    if a.looks is None:
        raise ValueError(f"{plan.source.path}: --until-decided needs analysis.looks")
    sweep_dir = Path(sweep_dir)
    order, pairs = seed_order(plan), hypothesis_trials(plan)
    hypotheses = a.hypotheses()
    outcome = UntilDecidedOutcome()
    state: SequentialState | None = None
    for look, n in enumerate(a.looks, start=1):
        if look == 1:
            wanted = {t.trial_id for t in plan.trials if t.seed in order[:n]}
            open_ = list(range(len(hypotheses)))
        else:
            open_ = list(state.undecided)
            wanted = {tid for i in open_ for s in order[:state.next_n(i)] for tid in pairs[i].get(int(s), ())}
        keep = wanted | _done_ids(plan, sweep_dir)
        sub = dataclasses.replace(plan, trials=[t for t in plan.trials if t.trial_id in keep])
        say(f"look {look} of {len(a.looks)}: {n} seeds for {len(open_)} undecided hypothesis(es); "
            f"{len(wanted - _done_ids(plan, sweep_dir))} trial(s) to run")
        outcome.last = run(sub, sweep_dir, say=say, **run_kwargs)
        outcome.looks_run.append(look)
        outcome.trials_per_look.append(len(sub.trials))
        if outcome.last.exit_code != 0:
            outcome.stopped = (f"look {look} did not finish (exit {outcome.last.exit_code}): rerun the same "
                               f"command to resume; decided looks are replayed, finished trials are kept")
            say(outcome.stopped)
            return outcome
        state = state_of(plan, sweep_dir)
        outcome.states.append(state)
        for i in open_:
            say(f"  {hypotheses[i].role}: {hypotheses[i].label}: {decision_word(state.decisions[i], a)}")
        if not state.undecided:
            break
    return outcome
