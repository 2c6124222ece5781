"""Malformed inputs through the CLI: each is ONE line on stderr naming the file (and line) and key, exit 2,
before anything starts — nothing is left behind (no sweep directory, no runs/, no MLflow store, no Ray).

Table-driven: every case writes its input under ``tmp_path`` (sweep YAML, trial YAML, dataset trees in
the official layouts from ``tests/support/datasets.py``, checkpoints, results files), runs
``orchestrator.cli.main`` in-process with the working directory at ``tmp_path``, and compares the
directory listing before and after. A few cases also run as a subprocess and without ``--dry-run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main as cli_main
from tests.support.datasets import make_affectnet_tree, make_affwild2_tree, make_rafdb_tree, replace_line

REPO = Path(__file__).resolve().parent.parent


def sweep(base: str, grid: str = "seed: [0, 1]", extra: str = "") -> str:
    """A sweep YAML; ``base`` is the body of ``base:`` (its first line is line 3 of the file)."""
    return ("name: bad\nbase:\n" + textwrap.indent(textwrap.dedent(base).strip(), "  ") + "\ngrid:\n"
            + textwrap.indent(textwrap.dedent(grid).strip(), "  ") + "\n" + extra)


SYN = "dataset: {name: synthetic, n: 200, image_size: 16}\n"
SYN_NO_VA = "dataset: {name: synthetic, preset: affectnet_like, n: 200, image_size: 16, drop_tasks: [va, au]}\n"


def _affectnet(tmp: Path) -> Path:
    return make_affectnet_tree(tmp / "affectnet").root


def _affectnet_bad_line(tmp: Path) -> Path:
    tree = make_affectnet_tree(tmp / "affectnet")
    replace_line(tree.files["train"], 3, "1/t0001.jpg,2,1,16,18,not-a-number")
    return tree.root


def _affectnet_missing_images(tmp: Path) -> Path:
    return make_affectnet_tree(tmp / "affectnet", missing=[("train", 0), ("train", 1)]).root


def _rafdb_without_labels(tmp: Path) -> Path:
    tree = make_rafdb_tree(tmp / "rafdb")
    tree.files["labels"].unlink()
    return tree.root


def _affwild2_without_annotations(tmp: Path) -> Path:
    tree = make_affwild2_tree(tmp / "affwild2")
    for p in tree.files.values():
        p.unlink()
    return tree.root


def _checkpoint(kind: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / f"w_{kind}.pth"
        if kind == "garbage":
            path.write_bytes(b"\x00\x01 not a checkpoint " * 20)
        elif kind == "wrong_keys":
            torch.save({"model": {"not.an.encoder.key": torch.zeros(3)}}, path)
        elif kind == "truncated":
            from trainers.models import create_backbone

            full = tmp / "full.pth"
            torch.save(create_backbone("test_resnet").encoder.state_dict(), full)
            path.write_bytes(full.read_bytes()[:4000])
            full.unlink()
        elif kind == "list":
            torch.save([torch.zeros(2)], path)
        elif kind == "safetensors":
            path = tmp / "w.safetensors"
            path.write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\x7f{garbage")
        elif kind == "folder":
            path = tmp / "weights_dir"
            path.mkdir()
        return path

    return make


@dataclass
class Case:
    id: str
    argv: list[str]                 # {file} = the written input, {root} = what ``make`` returned
    content: str | bytes | None     # the input file's content (None: no file)
    expect: tuple[str, ...]         # substrings of the one stderr line (file:line, key path, hint)
    make: Callable[[Path], Path] | None = None
    filename: str = "sweep.yaml"


RUN = ["run", "{file}", "--dry-run"]
TRAIN = ["train", "{file}", "--no-progress"]

CASES = [
    # --- the issue's five ------------------------------------------------------------------------
    Case("dual_fusion_alpha_1.5", RUN, sweep(SYN + "method: {name: dual_fusion, alpha: 1.5}"),
         ("sweep.yaml:4: base.method.alpha: must be ≤ 1 (got 1.5)",)),
    Case("affectnet_root_missing", RUN, sweep("dataset: {name: affectnet, root: /missing}"),
         ("sweep.yaml:3:", "base.dataset.root", "/missing", "folder not found", "training.csv")),
    Case("backbone_resnet999", RUN, sweep(SYN + "backbone: {name: resnet999}"),
         ("sweep.yaml:4:", "base.backbone.name", "'resnet999'", "did you mean")),
    Case("pretrained_missing", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: /missing/w.pth}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "/missing/w.pth", "does not exist")),
    Case("yaml_not_utf8", RUN, b"name: caf\xe9\nbase: {}\ngrid: {seed: [0]}\n", ("sweep.yaml:1:", "not UTF-8")),
    # --- files that are not YAML -----------------------------------------------------------------
    Case("yaml_binary", RUN, bytes(range(256)) * 4, ("sweep.yaml:1:", "not a text file")),
    Case("yaml_control_char", RUN, "name: bad\nbase: {}\ngrid: {seed: [0]}\n# bell \x07\n",
         ("sweep.yaml:4:", "control character")),
    Case("yaml_syntax", RUN, "name: bad\ngrid: {seed: [0, 1\n", ("sweep.yaml:", "not valid YAML")),
    Case("yaml_top_level_list", RUN, "- name: bad\n", ("sweep.yaml", "expected a mapping")),
    Case("yaml_is_folder", ["run", "{root}", "--dry-run"], None, ("a_folder", "cannot read"),
         make=lambda tmp: (tmp / "a_folder").mkdir() or tmp / "a_folder"),
    # --- method options ---------------------------------------------------------------------------
    Case("option_unknown_name", RUN, sweep(SYN + "method: {name: dual_fusion, alfa: 0.3}"),
         ("sweep.yaml:4:", "base.method.alfa", 'did you mean "alpha"')),
    Case("option_bad_choice", RUN, sweep(SYN + "method: {name: dual_fusion, mixed: gmx}"),
         ("sweep.yaml:4:", "base.method.mixed", "euclidean", "gmm", "'gmx'")),
    Case("option_not_integer", RUN, sweep(SYN + "method: {name: grefel, hidden: 2.5}"),
         ("sweep.yaml:4:", "base.method.hidden", "integer", "2.5")),
    Case("option_not_bool", RUN, sweep(SYN + "method: {name: ada_df, freeze_stem: maybe}"),
         ("sweep.yaml:4:", "base.method.freeze_stem", "true or false")),
    Case("option_threshold_zero", RUN, sweep(SYN + "method: {name: ada_df, threshold: 0}"),
         ("sweep.yaml:4:", "base.method.threshold", "must be > 0")),
    Case("option_grid_value", RUN, sweep(SYN + "method: {name: dual_fusion}",
                                         "seed: [0, 1]\nmethod.alpha:\n  - 0.5\n  - 1.5"),
         ("sweep.yaml:9:", "grid.method.alpha", "must be ≤ 1 (got 1.5)")),
    # --- datasets ---------------------------------------------------------------------------------
    Case("dataset_unknown", RUN, sweep("dataset: {name: afectnet, root: /x}"),
         ("sweep.yaml:3:", "dataset.name", 'did you mean "affectnet"')),
    Case("dataset_root_unset", RUN, sweep("dataset: {name: rafdb}"),
         ("sweep.yaml:3:", "base.dataset.root", "required", "list_patition_label.txt")),
    Case("dataset_root_env_unset", RUN, sweep("dataset: {name: affectnet, root: $AFFSWEEP_TEST_NO_SUCH_ROOT}"),
         ("sweep.yaml:3:", "base.dataset.root", "$AFFSWEEP_TEST_NO_SUCH_ROOT", "not set")),
    Case("dataset_root_empty_folder", RUN, sweep("dataset: {name: affectnet, root: '{root}'}"),
         ("sweep.yaml:3:", "base.dataset.root", "training.csv", "not found"),
         make=lambda tmp: (tmp / "empty").mkdir() or tmp / "empty"),
    Case("affectnet_malformed_line", RUN, sweep("dataset: {name: affectnet, root: '{root}'}"),
         ("sweep.yaml:3:", "base.dataset.root", "training.csv:3:", "columns"), make=_affectnet_bad_line),
    Case("affectnet_missing_images", RUN, sweep("dataset: {name: affectnet, root: '{root}'}"),
         ("sweep.yaml:3:", "base.dataset.root", "t0000.jpg", "not found"), make=_affectnet_missing_images),
    Case("rafdb_no_label_file", RUN, sweep("dataset: {name: rafdb, root: '{root}'}"),
         ("sweep.yaml:3:", "base.dataset.root", "list_patition_label.txt"), make=_rafdb_without_labels),
    Case("affwild2_no_annotations", RUN, sweep("dataset: {name: affwild2, root: '{root}'}"),
         ("sweep.yaml:3:", "base.dataset.root", "no <video>.txt annotation files", "Train_Set"),
         make=_affwild2_without_annotations),
    Case("grid_dataset_root_missing", RUN, sweep(SYN, "seed: [0, 1]\ndataset:\n  - {name: synthetic}\n"
                                                      "  - {name: rafdb, root: /missing/raf}"),
         ("sweep.yaml:8:", "grid.dataset: dataset.root", "/missing/raf")),
    Case("synthetic_preset_unknown", RUN, sweep("dataset: {name: synthetic, preset: affwild_like}"),
         ("sweep.yaml:3:", "base.dataset.preset", 'did you mean "affwild2_like"')),
    # --- backbones and weights --------------------------------------------------------------------
    Case("pretrained_corrupt", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "w_garbage.pth", "corrupt"), make=_checkpoint("garbage")),
    Case("pretrained_truncated", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "w_truncated.pth", "corrupt"),
         make=_checkpoint("truncated")),
    Case("pretrained_wrong_keys", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "w_wrong_keys.pth", "lacks", "encoder keys"),
         make=_checkpoint("wrong_keys")),
    Case("pretrained_not_a_dict", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "w_list.pth", "not a state dict"), make=_checkpoint("list")),
    Case("pretrained_bad_safetensors", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "w.safetensors", "safetensors"),
         make=_checkpoint("safetensors")),
    Case("pretrained_is_folder", RUN, sweep(SYN + "backbone: {name: test_resnet, pretrained: '{root}'}"),
         ("sweep.yaml:4:", "base.backbone.pretrained", "weights_dir", "folder"), make=_checkpoint("folder")),
    Case("grid_backbone_unknown", RUN, sweep(SYN, "seed: [0]\nbackbone.name: [test_resnet, resnet18x]"),
         ("sweep.yaml:6:", "grid.backbone.name", "resnet18x", 'did you mean "resnet18"')),
    # --- what the cost or method needs that the dataset lacks ---------------------------------------
    Case("cost_w2_without_va", RUN, sweep(SYN_NO_VA + "method: {name: focal, cost: gaussian_w2}"),
         ("sweep.yaml:4:", "base.method.cost", "gaussian_w2", "VA")),
    Case("cost_va_au_without_au", RUN, sweep("dataset: {name: synthetic, preset: affectnet_like, n: 200}",
                                             "seed: [0]\nmethod.cost: [none, va_au]"),
         ("sweep.yaml:6:", "grid.method.cost", "va_au", "AU labels")),
    Case("cost_instance_without_va", RUN, sweep(SYN_NO_VA + "method: {name: focal, cost: instance,"
                                                " imported_from: 'synthetic:affectnet_like'}"),
         ("sweep.yaml:4:", "base.method.cost", "instance", "own VA")),
    Case("cost_circumplex_without_va", RUN, sweep(SYN_NO_VA + "method: {name: ot}"),
         ("sweep.yaml:4:", "base.method.cost", "imported_from")),
    Case("cost_imported_without_source", RUN, sweep(SYN + "method: {name: focal, cost: imported}"),
         ("sweep.yaml:4:", "base.method.imported_from", "required")),
    Case("import_source_unknown_preset", RUN, sweep(SYN + "method: {name: focal, cost: imported,"
                                                    " imported_from: 'synthetic:rafdb_like'}"),
         ("sweep.yaml:4:", "base.method.imported_from", "rafdb_like")),
    Case("import_source_missing_file", RUN, sweep(SYN + "method: {name: focal, cost: imported,"
                                                  " imported_from: /missing/circumplex.json}"),
         ("sweep.yaml:4:", "base.method.imported_from", "/missing/circumplex.json")),
    Case("method_needs_va", RUN, sweep(SYN_NO_VA, "seed: [0]\nmethod.name: [focal, dual_fusion]"),
         ("sweep.yaml:6:", "grid.method.name", "dual_fusion", "needs VA")),
    # --- trial YAML (affsweep train) ----------------------------------------------------------------
    Case("trial_alpha", TRAIN, SYN + "method: {name: dual_fusion, alpha: 1.5}\n",
         ("trial.yaml:2: method.alpha: must be ≤ 1 (got 1.5)",), filename="trial.yaml"),
    Case("trial_backbone", TRAIN, SYN + "backbone:\n  name: resnet999\n",
         ("trial.yaml:3: backbone.name", "resnet999"), filename="trial.yaml"),
    Case("trial_root_missing", TRAIN, "dataset:\n  name: affectnet\n  root: /missing\n",
         ("trial.yaml:3: dataset.root", "/missing"), filename="trial.yaml"),
    Case("trial_not_utf8", TRAIN, b"seed: 0\nmethod: {name: \xff\xfe}\n", ("trial.yaml:2:", "not UTF-8"),
         filename="trial.yaml"),
    # --- results files for analyze, data check, usage ---------------------------------------------
    Case("results_missing_columns", ["analyze", "{file}"], "a,b\n1,2\n", ("trial_id",), filename="results.csv"),
    Case("results_corrupt_parquet", ["analyze", "{file}"], b"PAR1 garbage", ("results.parquet",),
         filename="results.parquet"),
    Case("results_wrong_suffix", ["analyze", "{file}"], "x\n", ("results.txt", ".parquet or .csv"),
         filename="results.txt"),
    Case("results_empty_folder", ["analyze", "{root}"], None, ("sweepdir", "no results"),
         make=lambda tmp: (tmp / "sweepdir").mkdir() or tmp / "sweepdir"),
    Case("data_check_missing_root", ["data", "check", "/missing/affectnet", "--dataset", "affectnet"], None,
         ("/missing/affectnet", "folder not found")),
    Case("data_check_unknown_dataset", ["data", "check", "/tmp", "--dataset", "affectnt"], None,
         ("--dataset", "invalid choice", "'affectnet'")),
    Case("data_cache_missing_root", ["data", "cache", "/missing/raf", "--dataset", "rafdb"], None,
         ("/missing/raf/EmoLabel/list_patition_label.txt", "not found")),
    Case("usage_unknown_flag", ["run", "{file}", "--dry-rn"], sweep(SYN), ("unrecognized arguments", "--dry-rn")),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _prepare(case: Case, tmp: Path) -> list[str]:
    root = case.make(tmp) if case.make else None
    file = tmp / case.filename
    if case.content is not None:
        content = case.content
        if isinstance(content, str):
            file.write_text(content.replace("{root}", str(root)), encoding="utf-8")
        else:
            file.write_bytes(content)
    return [a.replace("{file}", str(file)).replace("{root}", str(root)) for a in case.argv]


def test_at_least_thirty_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_one_line_exit_2_nothing_left(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AFFSWEEP_TEST_NO_SUCH_ROOT", raising=False)
    argv = _prepare(case, tmp_path)
    before = _listing(tmp_path)
    capsys.readouterr()
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    for part in case.expect:
        assert part in lines[0], lines[0]
    assert _listing(tmp_path) == before  # no sweep dir, runs/, mlflow store, ray dir, report


@pytest.mark.parametrize("cid", ["dual_fusion_alpha_1.5", "affectnet_root_missing", "backbone_resnet999",
                                 "pretrained_missing", "yaml_not_utf8"])
def test_the_issue_cases_are_refused_without_dry_run_too(cid, tmp_path, monkeypatch, capsys):
    """Without --dry-run the same line comes before Ray, MLflow or the sweep directory exist."""
    case = next(c for c in CASES if c.id == cid)
    monkeypatch.chdir(tmp_path)
    argv = [a for a in _prepare(case, tmp_path) if a != "--dry-run"] + ["--storage", str(tmp_path / "runs")]
    before = _listing(tmp_path)
    assert cli_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and case.expect[0] in lines[0]
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("cid", ["dual_fusion_alpha_1.5", "yaml_binary"])
def test_as_a_subprocess(cid, tmp_path):
    case = next(c for c in CASES if c.id == cid)
    argv = _prepare(case, tmp_path)
    before = _listing(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and case.expect[0] in lines[0], done.stderr
    assert _listing(tmp_path) == before


# --- what passes --------------------------------------------------------------------------------------

def test_well_formed_dataset_and_checkpoint_pass(tmp_path, monkeypatch, capsys):
    """The controls: the same trees and a checkpoint of the right architecture are accepted."""
    from trainers.models import create_backbone

    monkeypatch.chdir(tmp_path)
    aff = _affectnet(tmp_path)
    raf = make_rafdb_tree(tmp_path / "rafdb").root
    wild = make_affwild2_tree(tmp_path / "affwild2").root
    weights = tmp_path / "w.pth"
    torch.save(create_backbone("test_resnet").encoder.state_dict(), weights)
    (tmp_path / "sweep.yaml").write_text(sweep(
        f"dataset: {{name: affectnet, root: '{aff}'}}\nbackbone: {{name: test_resnet, pretrained: '{weights}'}}",
        "seed: [0, 1]",
        extra=f"include:\n  - {{dataset: {{name: rafdb, root: '{raf}'}}, seed: 0}}\n"
              f"  - {{dataset: {{name: affwild2, root: '{wild}'}}, seed: 0}}\n"))
    assert cli_main(["run", "sweep.yaml", "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "4 trials" in out


def test_each_distinct_dataset_is_checked_once(tmp_path, monkeypatch):
    """Preflight loads a dataset once for all the trials that share it, not once per trial."""
    from orchestrator import preflight
    from orchestrator.expand import load_sweep
    from trainers.data import registry

    aff = _affectnet(tmp_path)
    (tmp_path / "sweep.yaml").write_text(sweep(f"dataset: {{name: affectnet, root: '{aff}'}}",
                                               "seed: [0, 1, 2]\nmethod.lam: [0.5, 1.0]"))
    calls = []
    entry = registry.DATASETS["affectnet"]
    original = entry.load
    monkeypatch.setitem(registry.DATASETS, "affectnet", registry.Dataset(
        **{**entry.__dict__, "load": lambda *a, **k: calls.append(a[1]) or original(*a, **k)}))
    plan = load_sweep(tmp_path / "sweep.yaml")
    assert len(plan.trials) == 6
    preflight.check_sweep(plan)
    assert calls == ["train", "val"]


def test_backbone_kwargs_follow_the_architectures_own_data():
    """A fixed-input-size architecture (timm's pretrained_cfg) is built at the dataset's image size;
    registered names answer for the timm architecture they build."""
    from trainers.config import TrialConfig
    from trainers.engine import backbone_kwargs

    def kwargs(name):
        return backbone_kwargs(TrialConfig.model_validate({"backbone": {"name": name}, "dataset": {"image_size": 48}}))

    assert kwargs("test_vit") == {"img_size": 48}
    assert kwargs("fsfm_vit_b16") == {"img_size": 48}
    assert kwargs("siglip2_vit_b16") == {"img_size": 48}
    assert kwargs("test_resnet") == {}
    assert kwargs("resnet18") == {}
