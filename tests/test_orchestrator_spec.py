"""Sweep YAML validation, grid expansion and `affsweep run --dry-run` (no Ray, no MLflow)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from analysis.plan import AnalysisPlan
from orchestrator.cli import main as cli_main
from orchestrator.expand import load_sweep
from orchestrator.spec import ConfigError
from trainers.config import TrialConfig

BASE = """\
name: t
base:
  dataset: {name: synthetic, preset: affwild2_like, n: 300, image_size: 24}
  backbone: {name: test_resnet}
  epochs: 1
grid:
  seed: [0, 1]
  method.cost: [none, circumplex]
storage: STORAGE
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("STORAGE", str(tmp_path / "runs")))
    return path


# (what is wrong, edit of BASE, the exact one-line message after "<file>")
ERRORS = [
    ("unknown grid key", lambda b: b.replace("method.cost:", "method.cots:"),
     ':8: grid.method.cots: unknown key (did you mean "cost"?)'),
    ("unknown nested grid key", lambda b: b.replace("  method.cost: [none, circumplex]",
                                                    "  method:\n    cots: [none, circumplex]"),
     ':9: grid.method.cots: unknown key (did you mean "cost"?)'),
    ("unknown top-level key", lambda b: b.replace("grid:", "gird:"),
     ':6: gird: unknown key (did you mean "grid"?)'),
    ("wrong type", lambda b: b + "resources: {cpu: two}\n",
     ":10: resources.cpu: Input should be a valid number, unable to parse string as a number"),
    ("wrong type of a nested spec key", lambda b: b + "failure: {max_retries: -1}\n",
     ":10: failure.max_retries: Input should be greater than or equal to 0"),
    ("empty grid", lambda b: b.split("grid:")[0] + "grid: {}\nstorage: STORAGE\n",
     ":6: grid: empty grid (name at least one axis, e.g. seed: [0, 1, 2])"),
    ("empty axis", lambda b: b.replace("seed: [0, 1]", "seed: []"),
     ":7: grid.seed: empty list of values"),
    ("scalar axis", lambda b: b.replace("seed: [0, 1]", "seed: 3"),
     ":7: grid.seed: expected a list of values, got 3 (write [3] for one value)"),
    ("bad dotted key", lambda b: b.replace("method.cost:", "dataset.image_sise:"),
     ':8: grid.dataset.image_sise: unknown key (did you mean "image_size"?)'),
    ("dotted key below a value", lambda b: b.replace("method.cost:", "epochs.n:"),
     ":8: grid.epochs.n: epochs is a value, not a mapping: no key 'n' below it"),
    ("bad grid value (choice)", lambda b: b.replace("[none, circumplex]", "[none,\n    circumplx]"),
     ":9: grid.method.cost: unknown value 'circumplx' (did you mean \"circumplex\"?)"),
    ("bad grid value (type)", lambda b: b.replace("storage:", "  epochs: [2, x]\nstorage:"),
     ":9: grid.epochs: value 'x': Input should be a valid integer, unable to parse string as an integer"),
    ("bad grid value (range)", lambda b: b.replace("storage:", "  lr: [0.1, -1]\nstorage:"),
     ":9: grid.lr: value -1: Input should be greater than 0"),
    ("unknown base key", lambda b: b.replace("n: 300", "nn: 300"),
     ':3: base.dataset.nn: unknown key \'nn\' (did you mean "n"?)'),
    ("analysis selector value",
     lambda b: b + "analysis:\n  primary:\n    - {contrast: [{method.cost: circumplx}, {method.cost: none}], "
                   "metric: p_mtl}\n",
     ':12: analysis.primary.0.contrast.0: method.cost: unknown value \'circumplx\' (did you mean "circumplex"?)'),
    ("analysis unknown key", lambda b: b + "analysis:\n  primry: []\n",
     ':11: analysis.primry: unknown key (did you mean "primary"?)'),
    ("exclude value", lambda b: b + "exclude: [{method.cost: nne}]\n",
     ":10: exclude.0.method.cost: 'nne' is not a value of the axis (values: none, circumplex): "
     "the selector removes nothing"),
    ("include value", lambda b: b + "include:\n  - {seed: 3, method.cost: unifrm}\n",
     ":11: include.0.method.cost: unknown value 'unifrm' (did you mean \"uniform\"?)"),
    ("sweep name", lambda b: b.replace("name: t", "name: a/b"),
     ":1: name: 'a/b': use letters, digits, '.', '_' and '-' (it names the sweep directory)"),
]


@pytest.mark.parametrize("edit,expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_yaml_error_is_one_exact_line(tmp_path, edit, expected):
    path = write(tmp_path, edit(BASE))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value) == f"{path}{expected}"


@pytest.mark.parametrize("edit,expected", [e[1:] for e in ERRORS[::3]], ids=[e[0] for e in ERRORS[::3]])
def test_cli_exits_2_and_starts_nothing(tmp_path, capsys, edit, expected):
    import ray

    path = write(tmp_path, edit(BASE))
    assert cli_main(["run", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {path}{expected}\n"
    assert captured.out == ""
    assert not (tmp_path / "runs").exists()  # no sweep directory, so no MLflow store, no trial
    assert not ray.is_initialized()


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, BASE + "x: [\n")
    with pytest.raises(ConfigError, match=rf"^{path}:11: not valid YAML"):
        load_sweep(path)


# --- expansion -------------------------------------------------------------------------------------

def test_expansion_is_deterministic_and_content_addressed(tmp_path):
    path = write(tmp_path, BASE)
    a, b = load_sweep(path), load_sweep(path)
    ids = [t.trial_id for t in a.trials]
    assert ids == [t.trial_id for t in b.trials] and len(set(ids)) == 4
    # seed-major (the YAML's key order, last key fastest) and each id is the TrialConfig's own hash
    assert [(t.seed, t.axes["method.cost"]) for t in a.trials] == [
        (0, "none"), (0, "circumplex"), (1, "none"), (1, "circumplex")]
    for t in a.trials:
        cfg = TrialConfig.model_validate({
            "dataset": {"name": "synthetic", "preset": "affwild2_like", "n": 300, "image_size": 24},
            "backbone": {"name": "test_resnet"}, "epochs": 1, "seed": t.seed,
            "method": {"cost": t.axes["method.cost"]}})
        assert cfg.trial_id == t.trial_id
    # the same grid written nested, in another storage, with other placement: the same trials
    nested = BASE.replace("  method.cost: [none, circumplex]", "  method: {cost: [none, circumplex]}")
    nested = nested.replace("storage: STORAGE", "storage: elsewhere").replace("epochs: 1", "epochs: 1\n  device: cpu")
    assert [t.trial_id for t in load_sweep(write(tmp_path, nested, "n.yaml")).trials] == ids


def test_matched_seeds_share_everything_but_the_condition(tmp_path):
    plan = load_sweep(write(tmp_path, BASE))
    by_seed: dict[int, list] = {}
    for t in plan.trials:
        by_seed.setdefault(t.seed, []).append(t.config.identity())
    for configs in by_seed.values():
        for c in configs:
            c["method"].pop("cost")
        assert all(c == configs[0] for c in configs)  # same seed -> same data, init and order


def test_duplicate_points_collapse(tmp_path):
    text = BASE.replace("seed: [0, 1]", "seed: [0, 1, 0]") + "include:\n  - {seed: 1, method.cost: none}\n"
    plan = load_sweep(write(tmp_path, text))
    assert len(plan.trials) == 4
    # null resolves to the method's default cost (none for focal): the same experiment as "none"
    plan = load_sweep(write(tmp_path, BASE.replace("[none, circumplex]", "[none, circumplex, null]"), "d.yaml"))
    assert [t.axes["method.cost"] for t in plan.trials] == ["none", "circumplex"] * 2


def test_include_and_exclude(tmp_path):
    text = BASE + textwrap.dedent("""\
        exclude:
          - {seed: 1, method.cost: circumplex}   # one point
          - {method.cost: none, seed: 0}
        include:
          - {seed: 0, method.cost: uniform, method.lam: 0.5}
          - {seed: 0, method.cost: none}         # explicitly included: exclude does not apply
        """)
    plan = load_sweep(write(tmp_path, text))
    got = [(t.seed, t.axes["method.cost"], t.axes["method.lam"]) for t in plan.trials]
    assert got == [(0, "circumplex", 1.0), (1, "none", 1.0), (0, "uniform", 0.5), (0, "none", 1.0)]
    assert plan.axes == ["method.cost", "method.lam"]  # include keys become axes (columns)
    # a partial selector removes every point it matches
    plan = load_sweep(write(tmp_path, BASE + "exclude: [{method.cost: none}]\n", "p.yaml"))
    assert [t.axes["method.cost"] for t in plan.trials] == ["circumplex", "circumplex"]
    with pytest.raises(ConfigError, match=r"exclude: removes every grid point"):
        load_sweep(write(tmp_path, BASE + "exclude: [{seed: 0}, {seed: 1}]\n", "e.yaml"))


def test_method_options_and_nested_values(tmp_path):
    text = BASE.replace("storage:", "  method.gamma: [1.0, 2.0]\nstorage:")
    plan = load_sweep(write(tmp_path, text))
    assert len(plan.trials) == 8 and {t.config.method.options["gamma"] for t in plan.trials} == {1.0, 2.0}
    # ot is focal with another default cost: it takes the same options
    text = BASE.replace("storage:", "  method.name: [ot]\n  method.gamma: [1.0]\nstorage:")
    assert len(load_sweep(write(tmp_path, text, "o.yaml")).trials) == 4


def test_dry_run_prints_grid_resources_and_analysis_plan(tmp_path, capsys):
    text = BASE + textwrap.dedent("""\
        resources: {cpu: 1, gpu: 0.5}
        max_concurrent: 3
        analysis:
          baseline: {method.cost: none}
          primary: [{contrast: [{method.cost: circumplex}, {method.cost: none}], metric: p_mtl}]
          exploratory: [p_mtl, expr_f1]
        """)
    path = write(tmp_path, text)
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = load_sweep(path)
    lines = out.splitlines()
    assert lines[0] == f"sweep t: 4 trials (2 conditions x 2 seeds) -> {tmp_path / 'runs' / 't'}"
    assert lines[2].split() == ["trial_id", "seed", "method.cost"]
    for t, row in zip(plan.trials, lines[4:8]):
        assert row.split() == [t.trial_id, str(t.seed), t.axes["method.cost"]]
    assert "resources: per trial cpu=1 gpu=0.5; max_concurrent 3;" in out
    plan_hash = AnalysisPlan.model_validate({
        "baseline": {"method.cost": "none"},
        "primary": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}], "metric": "p_mtl"}],
        "exploratory": ["p_mtl", "expr_f1"]}).plan_hash()
    assert f"analysis plan {plan_hash}" in out
    assert ("    method.cost=circumplex vs method.cost=none on p_mtl: 2 paired seeds, min attainable p 0.5 vs 0.05: "
            "CANNOT reach it -- this design cannot decide H") in out
    assert "2 seeds -> smallest attainable two-sided p = 2/2^2 = 0.5" in out
    assert "WARNING: with 2 seeds no two-sided test can reach alpha=0.05; use at least 6 seeds" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_the_demo_reaches_alpha(capsys):
    assert cli_main(["run", "sweeps/demo.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep demo: 24 trials (4 conditions x 6 seeds)")
    assert "6 seeds -> smallest attainable two-sided p = 2/2^6 = 0.03125" in out
    # the primary can reach alpha; the two-member error_structure family cannot (0.03125 > 0.05/2)
    assert "on p_mtl: 6 paired seeds, min attainable p 0.03125 vs 0.05: can reach it" in out
    assert out.count("WARNING: this design cannot decide H") == 2 and "WARNING: with" not in out


def test_unpaired_seeds_are_warned_about(tmp_path):
    plan = load_sweep(write(tmp_path, BASE + "exclude: [{seed: 1, method.cost: none}]\n"))
    assert plan.warnings == ["condition method.cost=none lacks seeds [1]: those seeds are unpaired for it"]


# --- the CLI's other guards -------------------------------------------------------------------------

def test_resume_needs_an_existing_sweep(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert cli_main(["run", str(path), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_already_being_run_is_not_started_twice(tmp_path, capsys):
    import os
    import socket

    from orchestrator import sweep_dir as record

    path = write(tmp_path, BASE)
    sweep_dir = load_sweep(path).spec.sweep_dir()
    record.write_json(sweep_dir / "driver.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": "earlier"})
    assert cli_main(["run", str(path)]) == 2
    assert f"sweep t is already being run (pid {os.getpid()}" in capsys.readouterr().err
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["driver.json"]  # nothing else was touched


def test_ray_submit_entry_runs_the_sweep_against_the_cluster(monkeypatch):
    import orchestrator.cli
    from orchestrator import submit

    calls = []
    monkeypatch.setattr(orchestrator.cli, "main", lambda argv: calls.append(argv) or 0)
    assert submit.main(["--", "sweeps/demo.yaml"]) == 0
    assert submit.main(["sweeps/demo.yaml", "--address", "ray://head:10001", "--resume"]) == 0
    assert calls == [["run", "sweeps/demo.yaml", "--address", "auto"],
                     ["run", "sweeps/demo.yaml", "--address", "ray://head:10001", "--resume"]]
    assert submit.main([]) == 2


def test_credentials_are_not_written_with_the_tracking_uri():
    from orchestrator.tracking import redact

    assert redact("https://alice:s3cret@mlflow.example.org:5000/x") == "https://mlflow.example.org:5000/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
