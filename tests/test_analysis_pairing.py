"""Matched-seed pairing: what cannot be paired is reported, never dropped silently or paired."""

import numpy as np
import pandas as pd
import pytest

from analysis.contrasts import compare_contrast
from analysis.pairing import Contrast, pair_trials, select

CIRC_VS_NONE = Contrast.of({"method.cost": "circumplex"}, {"method.cost": "none"})


def grid(seeds=range(3), costs=("none", "circumplex"), datasets=("aw",), **extra):
    rows = []
    for dataset in datasets:
        for seed in seeds:
            for cost in costs:
                rows.append({"trial_id": f"{dataset}-{cost}-{seed}", "seed": seed, "status": "done",
                             "method.cost": cost, "dataset.name": dataset, "p_mtl": 1.0 + 0.01 * (cost != "none"),
                             "data_order_hash": f"{dataset}{seed}", **extra})
    return pd.DataFrame(rows)


AXES = ("method.cost", "dataset.name")


def test_complete_grid_pairs_every_seed():
    p = pair_trials(grid(), CIRC_VS_NONE, AXES)
    assert [(x.seed, x.trial_a, x.trial_b) for x in p.pairs] == [
        (0, "aw-circumplex-0", "aw-none-0"), (1, "aw-circumplex-1", "aw-none-1"), (2, "aw-circumplex-2", "aw-none-2")]
    assert p.unmatched == () and p.integrity == () and p.clean
    assert p.contrasted_axes == ("method.cost",) and p.strata_axes == ("dataset.name",)


def test_missing_partner_is_reported():
    f = grid()
    f = f[f.trial_id != "aw-none-2"].reset_index(drop=True)
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    assert [x.seed for x in p.pairs] == [0, 1]
    (u,) = p.unmatched
    assert (u.trial_id, u.side, u.seed) == ("aw-circumplex-2", "A", 2)
    assert "no B trial with seed 2" in u.reason
    assert "method.cost=circumplex" in u.condition


def test_failed_trials_are_listed_and_their_partners_unmatched():
    f = grid()
    f.loc[f.trial_id == "aw-none-1", "status"] = "failed"
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    assert [x.seed for x in p.pairs] == [0, 2]
    reasons = {u.trial_id: u.reason for u in p.unmatched}
    assert reasons["aw-none-1"] == "status=failed"
    assert "no B trial with seed 1" in reasons["aw-circumplex-1"]


def test_duplicated_grid_points_are_not_paired():
    f = grid()
    dup = f[f.trial_id == "aw-circumplex-0"].assign(trial_id="aw-circumplex-0-rerun")
    f = pd.concat([f, dup], ignore_index=True)
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    assert [x.seed for x in p.pairs] == [1, 2]
    reasons = {u.trial_id: u.reason for u in p.unmatched}
    assert set(reasons) == {"aw-circumplex-0", "aw-circumplex-0-rerun", "aw-none-0"}
    assert "2 trials of A share seed 0" in reasons["aw-circumplex-0"]
    assert "ambiguous" in reasons["aw-none-0"]


def test_integrity_violation_is_listed_and_excluded_from_the_test():
    f = grid(seeds=range(7))
    f.loc[f.trial_id == "aw-none-3", "data_order_hash"] = "something-else"
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    (v,) = p.integrity
    assert (v.seed, v.trial_a, v.trial_b, v.hash_a, v.hash_b) == (3, "aw-circumplex-3", "aw-none-3", "aw3",
                                                                  "something-else")
    assert 3 not in [x.seed for x in p.pairs]
    result = compare_contrast(f, CIRC_VS_NONE, AXES, ["p_mtl"])
    (c,) = result.comparisons
    assert c.n == 6 and c.seeds == (0, 1, 2, 4, 5, 6)
    assert c.pvalue == 0.03125  # six clean all-positive pairs, not seven (which would give 2/128)


def test_missing_hash_is_noted_not_hidden():
    f = grid().drop(columns="data_order_hash")
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    assert len(p.pairs) == 3
    assert any("integrity is unchecked" in n for n in p.notes)


def test_strata_never_cross_datasets():
    f = grid(datasets=("aw", "an"))
    p = pair_trials(f, CIRC_VS_NONE, AXES)
    strata = p.by_stratum()
    assert set(strata) == {(("dataset.name", "aw"),), (("dataset.name", "an"),)}
    for stratum, pairs in strata.items():
        name = dict(stratum)["dataset.name"]
        assert all(x.trial_a.startswith(name) and x.trial_b.startswith(name) for x in pairs)
    # a seed missing in one dataset only affects that dataset
    f2 = f[f.trial_id != "an-none-0"].reset_index(drop=True)
    p2 = pair_trials(f2, CIRC_VS_NONE, AXES)
    assert len(p2.by_stratum()[(("dataset.name", "aw"),)]) == 3
    assert len(p2.by_stratum()[(("dataset.name", "an"),)]) == 2
    assert [u.trial_id for u in p2.unmatched] == ["an-circumplex-0"]


def test_axes_constant_on_each_side_are_implied_by_the_contrast():
    f = grid()
    f["method.name"] = np.where(f["method.cost"] == "none", "focal", "ot")
    p = pair_trials(f, CIRC_VS_NONE, ("method.name", *AXES))
    assert len(p.pairs) == 3
    assert "method.name" in p.contrasted_axes
    assert any("implied" in n for n in p.notes)


def test_selector_matching_numbers_missing_values_and_lists():
    f = pd.DataFrame({"trial_id": list("abcd"), "seed": 0, "method.lam": [1.0, 0.5, np.nan, 2.0],
                      "method.cost": ["circumplex", "none", None, "uniform"]})
    assert select(f, {"method.lam": 1}).tolist() == [True, False, False, False]
    assert select(f, {"method.cost": None}).tolist() == [False, False, True, False]
    assert select(f, {"method.cost": ["none", "uniform"]}).tolist() == [False, True, False, True]


def test_unknown_selector_key_suggests_the_column():
    with pytest.raises(KeyError, match="did you mean 'method.cost'"):
        pair_trials(grid(), Contrast.of({"method.cots": "circumplex"}, {"method.cost": "none"}), AXES)


def test_overlapping_selectors_are_rejected():
    with pytest.raises(ValueError, match="match both sides"):
        pair_trials(grid(), Contrast.of({"method.cost": "circumplex"}, {"dataset.name": "aw"}), AXES)
