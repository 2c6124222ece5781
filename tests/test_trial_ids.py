"""Trial ids of the shipped sweeps never move by accident (tests/support/trial_ids.py)."""

import json

import pytest

from tests.support.trial_ids import REPO, TABLE, current_table, shipped_sweeps

REGENERATE = "python -m tests.support.trial_ids --write"


@pytest.fixture(scope="module")
def table():
    return json.loads(TABLE.read_text())


def test_every_shipped_sweep_is_in_the_table(table):
    assert sorted(table) == shipped_sweeps(), f"a shipped YAML was added or removed: {REGENERATE}"


def test_every_shipped_sweep_expands_to_its_committed_trial_ids(table, monkeypatch):
    monkeypatch.chdir(REPO)  # file cost sources are relative to the clone, as for a user
    now = current_table()
    moved = [f"{key}: {len(set(table[key]) ^ set(ids))} trial ids differ (and order: {table[key] != ids})"
             for key, ids in now.items() if table.get(key) != ids]
    assert not moved, ("trial ids moved — finished studies would be re-run under new ids. If that is "
                       f"deliberate, regenerate ({REGENERATE}) and say why: " + "; ".join(moved))


def test_the_golden_test_sees_a_change_of_the_experiment(table, monkeypatch):
    """Changing a defining field changes the id (so the test above can fail)."""
    from trainers.config import TrialConfig

    a = TrialConfig()
    assert TrialConfig(epochs=a.epochs + 1).trial_id != a.trial_id
    assert TrialConfig(device="cpu").trial_id == a.trial_id  # placement is not the experiment
