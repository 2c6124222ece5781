"""Packed sweeps (``pack:``): grouping and validation (fast), and end to end through Ray Tune and
MLflow: a packed sweep gives per trial exactly what the unpacked sweep gives (slow, ci)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from orchestrator import sweep_dir as record
from orchestrator.console import LiveView
from orchestrator.expand import load_sweep
from orchestrator.packing import pack_trials
from orchestrator.spec import ConfigError
from tests.support.sweeps import sweep_yaml


def write(tmp_path, name="s.yaml", seeds=(0, 1, 2, 3), costs=("none",), pack=None, uri="local",
          experiment="packed", storage=None):
    """The tiny sweep at 32 px, ``costs`` x ``seeds``, every epoch not evaluated (the last only)."""
    return sweep_yaml(tmp_path / name, name="packed", storage=storage or tmp_path / "runs", uri=uri,
                      experiment=experiment, grid={"seed": list(seeds), "method.cost": list(costs)},
                      base={"dataset": {"image_size": 32}}, eval_every=None, analysis={"exploratory": ["p_mtl"]},
                      extra={"pack": pack} if pack is not None else None)


# --- fast: grouping and validation --------------------------------------------------------------------

def test_packs_group_seeds_of_one_condition_and_keep_trial_ids(tmp_path):
    plain = load_sweep(write(tmp_path, "a.yaml", seeds=range(5), costs=("none", "uniform")))
    plan = load_sweep(write(tmp_path, "b.yaml", seeds=range(5), costs=("none", "uniform"), pack=2))
    assert [t.trial_id for t in plan.trials] == [t.trial_id for t in plain.trials]  # placement only
    packs = pack_trials(plan.trials, plan.spec.pack, plan.axes)
    # per cost, seeds in plan order, at most 2 a pack: [0 1] [2 3] [4] for each of the two costs
    assert [[(t.axes["method.cost"], t.seed) for t in p] for p in packs] == [
        [("none", 0), ("none", 1)], [("uniform", 0), ("uniform", 1)], [("none", 2), ("none", 3)],
        [("uniform", 2), ("uniform", 3)], [("none", 4)], [("uniform", 4)]]
    both = load_sweep(write(tmp_path, "c.yaml", seeds=range(5), costs=("none", "uniform"),
                            pack={"size": 4, "by": ["seed", "method.cost"]}))
    packs = pack_trials(both.trials, both.spec.pack, both.axes)
    assert [len(p) for p in packs] == [4, 4, 2]
    assert sorted(t.trial_id for p in packs for t in p) == sorted(t.trial_id for t in both.trials)


@pytest.mark.parametrize("pack, line, message", [
    ("pack: 0", "pack.size", "greater than or equal to 1"),
    ("pack: true", "pack", "expected trials per pack (pack: 4)"),
    ("pack: {size: 2, by: [sed]}", "pack.by.0", 'unknown axis \'sed\' (did you mean "seed"?)'),
    ("pack: {size: 2, by: [dataset.n]}", "pack.by.0", "packed trials share one dataset"),
    ("pack: {size: 2, by: [seed, seed]}", "pack.by.1", "named twice"),
    ("pack: {size: 2, bye: [seed]}", "pack.bye", 'unknown key (did you mean "by"?)'),
])
def test_a_bad_pack_setting_is_one_line_naming_file_line_and_key(tmp_path, pack, line, message):
    path = write(tmp_path, pack=yaml.safe_load(pack)["pack"])
    written = path.read_text().splitlines()
    at = next(i for i, text in enumerate(written, 1) if text.startswith("pack:"))
    key = next(k for k in reversed(line.split(".")) if not k.isdigit())  # the key whose line it names
    at = next((i for i, text in enumerate(written[at:], at + 1) if text.strip().startswith(f"{key}:")), at)
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{at}: {line}: ") and message in text and "\n" not in text


def test_packing_by_seed_needs_a_seed_axis(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ngrid:\n  method.cost: [none, uniform]\npack: 4\n")
    with pytest.raises(ConfigError, match=r"s.yaml:4: pack: unknown axis 'seed'"):
        load_sweep(path)


def test_the_live_view_counts_a_packs_members_as_trials():
    def pack(status, done=0, k=4):
        return SimpleNamespace(status=status, num_failures=0, config={"pack": {"members": [{}] * k}},
                               last_result={"pack/done": done})

    view = LiveView("p", total=10, say=lambda line: None)
    view.on_step_end(0, [pack("RUNNING", done=1), pack("PENDING"), pack("TERMINATED", k=2)])
    assert view.counts == {"done": 3, "running": 3, "failed": 0, "pending": 4}
    view.on_step_end(0, [pack("ERROR", done=3), pack("RUNNING"), pack("TERMINATED", k=2)])
    assert view.counts == {"done": 5, "running": 4, "failed": 1, "pending": 0}


# --- slow: packed and unpacked end to end ---------------------------------------------------------------

TIMES = {"train_seconds", "images_per_second"}  # wall clock: the only columns that may differ


@pytest.mark.slow
@pytest.mark.ci
def test_a_packed_sweep_gives_each_trial_what_the_unpacked_sweep_gives(tmp_path, ray_local, mlflow_http,
                                                                       monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.driver import run_sweep

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    server = mlflow_http  # the session's (conftest); an experiment per kind
    plans = {kind: load_sweep(write(tmp_path, f"{kind}.yaml", uri=server.uri, experiment=kind,
                                    storage=tmp_path / kind, pack=4 if kind == "packed" else None))
             for kind in ("unpacked", "packed")}
    ids = [t.trial_id for t in plans["packed"].trials]
    assert ids == [t.trial_id for t in plans["unpacked"].trials] and len(ids) == 4
    said: list[str] = []
    out = run_sweep(plans["unpacked"], plans["unpacked"].spec.sweep_dir(), analyze=False, say=said.append)
    assert out.exit_code == 0 and sorted(out.done) == sorted(ids)
    # the packed run: one Ray trial for the four seeds; one member fails after its first epoch
    # -> its pack is retried, the three finished members are skipped, it resumes from epoch 1
    flaky = ids[2]
    monkeypatch.setenv("AFFSWEEP_FAIL_TRIALS", f"{flaky}:1")
    said.clear()
    out = run_sweep(plans["packed"], plans["packed"].spec.sweep_dir(), analyze=False, say=said.append)
    assert out.exit_code == 0 and sorted(out.done) == sorted(ids) and out.failed == []
    assert any("packed: 4 trials in 1 Ray trials of up to 4" in line for line in said)
    assert any(f"trial {flaky} failed (InjectedFailure" in line for line in said)

    tables = {k: pd.read_parquet(p.spec.sweep_dir() / "results.parquet") for k, p in plans.items()}
    for kind, table in tables.items():
        assert list(table["trial_id"]) == ids and list(table["status"]) == ["done"] * 4, kind  # once each
    keep = [c for c in tables["unpacked"].columns if c not in TIMES | {"node_id", "hostname", "error"}]
    assert list(tables["packed"].columns) == list(tables["unpacked"].columns)
    pd.testing.assert_frame_equal(tables["packed"][keep], tables["unpacked"][keep])
    assert tables["packed"]["p_mtl"].nunique() == 4  # four trials, not one four times

    packed_dir = plans["packed"].spec.sweep_dir()
    state = record.read_state(record.trial_dir(packed_dir, flaky))
    assert state["status"] == "done" and state["attempt"] == 2 and state["first_epoch"] == 2
    for tid in set(ids) - {flaky}:  # finished in the first attempt, skipped by the retry
        assert record.read_state(record.trial_dir(packed_dir, tid))["attempt"] == 1

    client = MlflowClient(server.uri)
    for kind in plans:
        exp = client.get_experiment_by_name(kind)
        runs = client.search_runs([exp.experiment_id], "", max_results=1000)
        assert Counter(r.data.tags["affsweep.kind"] for r in runs) == {"sweep": 1, "trial": 4, "summary": 1}
        trial_runs = {r.data.tags["affsweep.trial_id"]: r for r in runs if r.data.tags["affsweep.kind"] == "trial"}
        assert sorted(trial_runs) == sorted(ids)  # one run per trial
        for tid, run in trial_runs.items():
            assert run.info.status == "FINISHED" and run.data.tags["affsweep.status"] == "done"
            # every epoch exactly once, the retried member's included
            assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
            row = tables[kind].set_index("trial_id").loc[tid]
            assert run.data.metrics["p_mtl"] == pytest.approx(row["p_mtl"], rel=0, abs=1e-12)
        (summary,) = [r for r in runs if r.data.tags["affsweep.kind"] == "summary"]
        assert summary.data.metrics["p_mtl/n"] == 4
        assert summary.data.metrics["p_mtl/mean"] == pytest.approx(tables["unpacked"]["p_mtl"].mean())
