"""A cost is a source and a control (trainers/costs.py, docs/methods.md §13)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trainers import costs
from trainers.config import ConfigError, TrialConfig, load_trial_config
from trainers.costs import CostSpec, CostTable, build_cost, load_cost_table, register_cost
from trainers.data.labels import ABAW_EXPR, AFFWILD2
from trainers.geometry import derangement, estimate_geometry, gaussian_w2_cost

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "sweeps/costs/affwild2_name_similarity.json"


def random_cost(k=8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.1, 2.0, (k, k))
    c = (c + c.T) / 2
    np.fill_diagonal(c, 0.0)
    return c


def shuffled(c: np.ndarray, seed=1):
    """The label-order cost C written in another class order: (names, C[s][:, s])."""
    s = np.random.default_rng(seed).permutation(len(c))
    return [ABAW_EXPR[i] for i in s], c[np.ix_(s, s)]


def write_cost(tmp_path: Path, fmt: str, names, matrix, name="cost") -> Path:
    matrix = np.asarray(matrix, dtype=float)
    if fmt == "json":
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"classes": list(names), "cost": matrix.tolist()}))
    elif fmt == "csv":
        p = tmp_path / f"{name}.csv"
        pd.DataFrame(matrix, index=list(names), columns=list(names)).rename_axis("class").to_csv(p)
    elif fmt == "npz":
        p = tmp_path / f"{name}.npz"
        np.savez(p, classes=np.array(list(names)), cost=matrix)
    else:
        p = tmp_path / f"{name}.npy"
        np.save(p, matrix)
        (tmp_path / f"{name}.classes.txt").write_text("\n".join(names) + "\n")
    return p


# --- file formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "csv", "npz", "npy"])
def test_cost_files_load_and_reorder_by_name(tmp_path, fmt):
    truth = random_cost()
    names, written = shuffled(truth)
    path = write_cost(tmp_path, fmt, names, written)
    table = load_cost_table(path)
    assert table.classes == tuple(names)
    got = table.in_order(ABAW_EXPR)
    np.testing.assert_allclose(got.cost, truth)
    assert got.classes == ABAW_EXPR


def test_csv_rows_and_columns_are_matched_by_name_separately(tmp_path):
    truth = random_cost()
    names, written = shuffled(truth)
    df = pd.DataFrame(written, index=names, columns=names).iloc[::-1]  # rows in yet another order
    (tmp_path / "c.csv").write_text(df.rename_axis("class").to_csv())
    np.testing.assert_allclose(load_cost_table(tmp_path / "c.csv").in_order(ABAW_EXPR).cost, truth)


def test_names_match_case_insensitively_and_through_aliases(tmp_path):
    truth = random_cost()
    aliases = {"Happiness": "happy", "Sadness": "SAD", "Anger": "angry"}
    names = [aliases.get(n, n) for n in ABAW_EXPR]
    p = write_cost(tmp_path, "json", names, truth)
    np.testing.assert_allclose(load_cost_table(p).in_order(ABAW_EXPR).cost, truth)


def bad_files():
    c = random_cost()
    names = list(ABAW_EXPR)
    neg, nan, diag = c.copy(), c.copy(), c.copy()
    neg[1, 2] = -0.5
    nan[3, 4] = np.nan
    diag[5, 5] = 0.2
    return [
        ("not square", names[:7], c[:7, :]),
        ("negative", names, neg),
        ("not finite", names, nan),
        ("diagonal must be zero", names, diag),
        ("'Boredom' is not in the label space", [*names[:7], "Boredom"], c),
        ("'Other' of the label space is missing", names[:7], c[:7, :7]),
    ]


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("problem,names,matrix", bad_files(), ids=[b[0] for b in bad_files()])
def test_each_malformed_file_is_one_line_naming_file_and_problem(tmp_path, fmt, problem, names, matrix):
    if fmt == "csv" and problem == "not square":  # 7 named rows under 8 named columns
        path = tmp_path / "cost.csv"
        pd.DataFrame(matrix, index=names, columns=list(ABAW_EXPR)).rename_axis("class").to_csv(path)
    else:
        path = write_cost(tmp_path, fmt, names, matrix)
    trial = tmp_path / "trial.yaml"
    trial.write_text(f"dataset: {{name: synthetic}}\nmethod:\n  name: focal\n  cost: {{source: 'file:{path}', "
                     "control: permuted}\n")
    with pytest.raises(ConfigError) as err:
        load_trial_config(trial)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{trial}:4: method.cost"), msg
    assert str(path) in msg and (problem in msg or problem.replace("not square", "rows") in msg), msg


def test_missing_and_unreadable_files_are_named(tmp_path):
    p = write_cost(tmp_path, "json", [*ABAW_EXPR[:7], "Joy"], random_cost())   # Joy is Happiness
    with pytest.raises(ValueError, match="'Happiness' and 'Joy' name the same class"):
        TrialConfig.model_validate({"method": {"cost": f"file:{p}"}})
    with pytest.raises(ValueError, match=r"cost file .*nope\.json: cannot read"):
        TrialConfig.model_validate({"method": {"cost": f"file:{tmp_path}/nope.json"}})
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        TrialConfig.model_validate({"method": {"cost": f"file:{tmp_path}/x.json"}})
    np.save(tmp_path / "m.npy", random_cost())
    with pytest.raises(ValueError, match=r"m\.classes\.txt"):
        TrialConfig.model_validate({"method": {"cost": f"file:{tmp_path}/m.npy"}})


def test_shipped_name_similarity_file_is_valid_for_the_abaw_label_space():
    table = load_cost_table(REPO / SHIPPED).in_order(AFFWILD2.class_names)
    np.testing.assert_allclose(table.cost, table.cost.T)
    assert table.cost.max() <= 1.0 and "hand-written" in json.loads((REPO / SHIPPED).read_text())["about"]


# --- controls ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 3, 11])
def test_permuted_control_is_the_seeds_derangement_of_the_source(tmp_path, seed):
    truth = random_cost(seed=seed)
    path = write_cost(tmp_path, "json", *shuffled(truth))
    choice = build_cost({"source": f"file:{path}", "control": "permuted"}, None, seed, label_space=AFFWILD2)
    pi = derangement(8, seed)
    assert (pi != np.arange(8)).all()
    np.testing.assert_array_equal(choice.derangement, pi)
    np.testing.assert_allclose(choice.matrix, truth[pi][:, pi])       # C^perm_ij = C_{pi(i) pi(j)}
    np.testing.assert_allclose(choice.source_cost, truth)
    assert choice.cost_source == f"file:{path}" and choice.control == "permuted"


def test_uniform_control_is_the_sources_off_diagonal_mean(tmp_path):
    truth = random_cost(seed=5)
    path = write_cost(tmp_path, "csv", *shuffled(truth))
    choice = build_cost({"source": f"file:{path}", "control": "uniform"}, None, 0, label_space=AFFWILD2)
    off = truth[~np.eye(8, dtype=bool)]
    expected = np.full((8, 8), off.sum() / 56)                          # 8 * 7 off-diagonal entries
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(choice.matrix, expected)
    assert choice.derangement is None


# --- shorthands: same matrices, same trial ids -------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    from tests.support.toy_index import toy_index

    df, _ = toy_index(n=1200)
    return df, estimate_geometry(df, AFFWILD2, n_boot=50)


@pytest.mark.parametrize("shorthand", ["circumplex", "permuted", "uniform", "instance", "gaussian_w2", "va_au"])
def test_shorthands_equal_their_source_and_control_and_the_study_formulas(toy, shorthand):
    _, geo = toy
    source, control = costs.SHORTHANDS[shorthand]
    a = build_cost(shorthand, geo, 7)
    b = build_cost({"source": source, "control": control}, geo, 7)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.variant == b.variant == shorthand
    base = geo.finite_cost
    pi = derangement(8, 7)
    expected = {"circumplex": base, "instance": base, "permuted": base[np.ix_(pi, pi)],
                "uniform": np.where(np.eye(8, dtype=bool), 0.0, base[~np.eye(8, dtype=bool)].mean()),
                "gaussian_w2": gaussian_w2_cost(geo.centroids, geo.covariances)}
    if shorthand in expected:
        np.testing.assert_allclose(a.matrix, expected[shorthand])
    np.testing.assert_allclose(a.circumplex, base)


def test_a_shorthand_is_stored_as_todays_string():
    for name in costs.COST_VARIANTS:
        pair = costs.SHORTHANDS.get(name)
        forms = [name] if pair is None else [name, {"source": pair[0], "control": pair[1]}]
        ids = set()
        for form in forms:
            cfg = TrialConfig.model_validate({"seed": 2, "method": {"name": "focal", "cost": form}})
            assert cfg.method.cost == name                                 # the canonical value is the old string
            assert cfg.identity()["method"]["cost"] == name and "cost_sha256" not in cfg.identity()["method"]
            ids.add(cfg.trial_id)
        assert len(ids) == 1


@pytest.mark.parametrize("sweep", ["sweeps/demo.yaml", "sweeps/study/cost_controls.synthetic.yaml"])
def test_shipped_sweeps_keep_their_ids_when_written_as_source_and_control(tmp_path, sweep):
    """Today's strings and their {source, control} spellings expand to the same trial ids; the canonical
    JSON still holds the old string, so the ids are those computed before costs had sources."""
    from orchestrator.expand import load_sweep

    plan = load_sweep(REPO / sweep)
    spec = yaml.safe_load((REPO / sweep).read_text())
    spec["grid"]["method.cost"] = [v if v == "none" else dict(zip(("source", "control"), costs.SHORTHANDS[v]))
                                   for v in spec["grid"]["method.cost"]]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    rewritten = load_sweep(tmp_path / "s.yaml")
    assert sorted(t.trial_id for t in plan.trials) == sorted(t.trial_id for t in rewritten.trials)
    assert all(isinstance(t.config.identity()["method"]["cost"], str) for t in rewritten.trials)


def test_non_shorthand_values_are_stored_as_the_mapping_and_files_by_content(tmp_path):
    path = write_cost(tmp_path, "json", ABAW_EXPR, random_cost())
    bare = TrialConfig.model_validate({"method": {"cost": {"source": f"file:{path}"}}})
    assert bare.method.cost == f"file:{path}"                          # control none: the bare source
    perm = TrialConfig.model_validate({"method": {"cost": {"source": f"file:{path}", "control": "permuted"}}})
    assert perm.method.cost == CostSpec(source=f"file:{path}", control="permuted")
    assert perm.model_dump(mode="json")["method"]["cost"] == {"source": f"file:{path}", "control": "permuted"}
    before = perm.trial_id
    write_cost(tmp_path, "json", ABAW_EXPR, random_cost(seed=9))         # same path, other matrix
    assert TrialConfig.model_validate(perm.model_dump()).trial_id != before


def test_cost_typos_still_name_the_closest_value():
    with pytest.raises(ValueError, match='unknown value .circumplx. \\(did you mean "circumplex"\\?\\)'):
        TrialConfig.model_validate({"method": {"cost": "circumplx"}})
    with pytest.raises(ValueError, match='unknown key .contol.'):
        TrialConfig.model_validate({"method": {"cost": {"source": "circumplex", "contol": "uniform"}}})
    with pytest.raises(ValueError, match="not registered with @register_cost"):
        TrialConfig.model_validate({"method": {"cost": {"source": "no_such_cost"}}})


# --- registered functions ------------------------------------------------------------------------

def test_a_registered_function_is_called_with_what_the_trial_knows_and_used(toy):
    from tests.support.toy_index import make_ctx
    from trainers.losses.ot import build_ot_term

    df, geo = toy
    seen = {}
    truth = random_cost(seed=4)

    @register_cost("test_taxonomy")
    def taxonomy(label_space, train_index, geometry):
        seen.update(label_space=label_space, train_index=train_index, geometry=geometry)
        names, written = shuffled(truth)
        return CostTable(tuple(names), written)                         # any order: matched by name

    try:
        cfg = TrialConfig.model_validate({"method": {"cost": {"source": "test_taxonomy", "control": "uniform"}}})
        ctx = make_ctx(df, seed=2, geometry=geo)
        term = build_ot_term(ctx, cfg.method.cost)
        assert seen["label_space"] is AFFWILD2 and seen["train_index"] is df and seen["geometry"] is geo
        np.testing.assert_allclose(term.choice.source_cost, truth)
        np.testing.assert_allclose(term.choice.matrix[0, 1], truth[~np.eye(8, dtype=bool)].mean())
        assert term.record()["cost_source"] == "test_taxonomy" and term.record()["cost_control"] == "uniform"
        assert term.choice.variant == "uniform(test_taxonomy)"
    finally:
        costs.COST_FUNCTIONS.pop("test_taxonomy")


def test_a_function_returning_a_bad_matrix_is_named(toy):
    df, geo = toy

    @register_cost("test_bad")
    def bad(label_space, train_index, geometry):
        return -random_cost()

    try:
        with pytest.raises(ValueError, match="cost function 'test_bad': entry .* is negative"):
            build_cost("test_bad", geo, 0, label_space=AFFWILD2, train_index=df)
    finally:
        costs.COST_FUNCTIONS.pop("test_bad")


def test_the_example_au_signature_cost(toy):
    from trainers.data.labels import AU_NAMES
    from trainers.geometry import au_signatures

    df, geo = toy
    choice = build_cost("au_signature", geo, 0, label_space=AFFWILD2, train_index=df)
    sigs = au_signatures(df[list(AU_NAMES)].to_numpy(float), df["expr"].to_numpy(), 8)
    np.testing.assert_allclose(choice.matrix[2, 5], np.linalg.norm(sigs[2] - sigs[5]))


# --- error structure under the source ---------------------------------------------------------

def test_source_error_metrics_score_under_the_unperturbed_source(tmp_path):
    from analysis.errors import affect_weighted_accuracy, error_severity

    truth = random_cost(seed=2)
    path = write_cost(tmp_path, "json", ABAW_EXPR, truth)
    confusion = np.random.default_rng(0).integers(0, 20, (8, 8)).astype(float)
    for control in ("none", "permuted", "uniform"):
        choice = build_cost({"source": f"file:{path}", "control": control}, None, 1, label_space=AFFWILD2)
        m = costs.source_error_metrics(confusion, choice)
        assert m == {"error_severity@source": error_severity(confusion, truth),
                     "affect_weighted_acc@source": affect_weighted_accuracy(confusion, truth)}
    assert costs.source_error_metrics(confusion, build_cost("permuted", None, 1, imported=truth)) == {}


# --- end to end: one short `affsweep train` ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.ci
def test_affsweep_train_with_a_file_source_and_permuted_control(tmp_path):
    trial = tmp_path / "trial.yaml"
    trial.write_text(yaml.safe_dump({
        "dataset": {"name": "synthetic", "preset": "affwild2_like", "n": 600, "image_size": 32},
        "backbone": {"name": "test_resnet", "pretrained": False},
        "method": {"name": "focal", "cost": {"source": f"file:{SHIPPED}", "control": "permuted"}},
        "seed": 3, "epochs": 1, "batch_size": 32, "warmup_epochs": 0, "eval_batch_size": 128,
    }))
    out = tmp_path / "t"
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "train", str(trial), "--out", str(out),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "circumplex.json").read_text())
    source = load_cost_table(REPO / SHIPPED).in_order(AFFWILD2.class_names).cost
    pi = derangement(8, 3)
    assert record["cost_source"] == f"file:{SHIPPED}" and record["cost_control"] == "permuted"
    assert record["derangement"] == pi.tolist()
    np.testing.assert_allclose(record["source_cost"], source)
    np.testing.assert_allclose(record["cost_used"], source[pi][:, pi])
    assert record["source_meta"]["sha256"] == load_cost_table(REPO / SHIPPED).sha256
    result = json.loads((out / "result.json").read_text())
    assert np.isfinite(result["error_severity@source"]) and np.isfinite(result["affect_weighted_acc@source"])
    assert np.isfinite(result["error_severity"])                       # still under the true circumplex
    assert "quadrant_keep@source" not in result                        # the name table has no centroids


def test_instance_source_with_controls(toy):
    """permuted: class rows and per-frame centroids both permuted by pi; uniform: no per-frame rows."""
    _, geo = toy
    pi = derangement(8, 5)
    perm = build_cost({"source": "instance", "control": "permuted"}, geo, 5)
    assert perm.per_frame and perm.variant == "permuted(instance)"
    np.testing.assert_allclose(perm.matrix, geo.finite_cost[np.ix_(pi, pi)])
    np.testing.assert_allclose(perm.centroids, geo.centroids[pi])
    uni = build_cost({"source": "instance", "control": "uniform"}, geo, 5)
    assert not uni.per_frame and uni.centroids is None
    np.testing.assert_allclose(uni.matrix, build_cost("uniform", geo, 5).matrix)
