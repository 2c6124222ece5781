"""Loading a sweep from a directory or a results file into one tidy frame."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.results import axis_columns, load_results, load_sweep

SPEC = {
    "name": "cost-controls",
    "base": {"dataset": {"name": "synthetic"}, "method": {"name": "ot"}},
    "grid": {"seed": [0, 1], "method.cost": ["none", "circumplex"], "method.lam": [0.5, 1.0]},
    "analysis": {"baseline": {"method.cost": "none"},
                 "families": {"f": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}],
                                     "metric": "p_mtl"}]}},
}


def results_frame():
    rows = []
    for seed in (0, 1):
        for cost in ("none", "circumplex"):
            for lam in (0.5, 1.0):
                rows.append({"trial_id": f"{cost}{lam}{seed}", "sweep": "cost-controls", "seed": seed, "status": "done",
                             "method.cost": cost, "method.lam": lam, "p_mtl": 1.2 + seed / 100, "expr_f1": 0.3,
                             "au_f1": np.nan, "expr_f1/Anger": 0.1, "au_f1/AU1": np.nan, "rsa_rho": 0.1,
                             "data_order_hash": f"abc{seed}"})
    return pd.DataFrame(rows)


@pytest.fixture
def sweep_dir(tmp_path):
    d = tmp_path / "cost-controls"
    d.mkdir()
    frame = results_frame()
    frame.to_parquet(d / "results.parquet", index=False)
    frame.to_csv(d / "results.csv", index=False)
    (d / "sweep.yaml").write_text(yaml.safe_dump(SPEC))
    (d / "mlflow.json").write_text(json.dumps({"tracking_uri": "http://127.0.0.1:5000", "experiment_id": "1",
                                               "parent_run_id": "abc"}))
    trial = d / "trials" / "circumplex1.00"
    trial.mkdir(parents=True)
    (trial / "confusion.json").write_text(json.dumps({"class_names": ["a", "b"], "matrix": [[3, 1], [0, 4]]}))
    return d


def test_load_sweep_directory(sweep_dir):
    sweep = load_sweep(sweep_dir)
    pd.testing.assert_frame_equal(sweep.results, load_results(sweep_dir / "results.parquet"))
    assert sweep.name == "cost-controls"
    assert sweep.axes == ("method.cost", "method.lam")  # the grid's keys, seed excluded
    assert set(sweep.metrics) == {"p_mtl", "expr_f1", "au_f1", "expr_f1/Anger", "au_f1/AU1", "rsa_rho"}
    assert sweep.plan.baseline == {"method.cost": "none"}
    assert sweep.mlflow["parent_run_id"] == "abc"
    names, matrix = sweep.confusion("circumplex1.00")
    assert names == ["a", "b"] and matrix.tolist() == [[3, 1], [0, 4]]
    assert sweep.confusion("missing") is None


def test_csv_and_parquet_agree(sweep_dir):
    from_parquet = load_results(sweep_dir / "results.parquet")
    from_csv = load_results(sweep_dir / "results.csv")
    assert list(from_csv.columns) == list(from_parquet.columns)
    for column in from_parquet.columns:
        a, b = from_parquet[column], from_csv[column]
        if pd.api.types.is_numeric_dtype(a):
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), equal_nan=True)
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist()
    # without the parquet file the directory falls back to the CSV
    (sweep_dir / "results.parquet").unlink()
    assert len(load_sweep(sweep_dir).results) == 8


def test_resolve_by_name_in_storage(sweep_dir):
    assert load_sweep("cost-controls", storage=sweep_dir.parent).name == "cost-controls"
    with pytest.raises(FileNotFoundError, match="no tracking URI"):
        load_sweep("no-such-sweep", storage=sweep_dir.parent)


def test_axes_without_a_sweep_yaml_are_the_non_metric_columns():
    frame = results_frame().assign(**{"backbone.name": "resnet18", "val_loss": 0.3})
    # dotted or non-numeric columns are axes; an unknown undotted number is a metric, not an axis
    assert axis_columns(frame) == ("method.cost", "method.lam", "backbone.name")


def test_bad_inputs_are_named(tmp_path, sweep_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.parquet or results.csv"):
        load_results(tmp_path / "empty")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(ValueError, match=".parquet or .csv"):
        load_results(tmp_path / "r.txt")
    pd.DataFrame({"seed": [0]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ValueError, match="trial_id"):
        load_results(tmp_path / "r.csv")
    spec = dict(SPEC, analysis={"primary": [{"contrast": [{"method.cost": "a"}], "metric": "p_mtl"}]})
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"sweep.yaml: analysis.primary.0.contrast: .*pair"):
        load_sweep(sweep_dir)
