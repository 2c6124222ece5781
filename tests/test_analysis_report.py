"""run_analysis / affsweep analyze on a sweep directory built by hand in the results contract."""

import base64
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats as st

from analysis.plan import AnalysisPlan
from analysis.report import main, run_analysis
from tests.support.hand_sweep import ANALYSIS, CENTROIDS, CLASSES, DELTA_F1, build_sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    directory = build_sweep(tmp_path_factory.mktemp("sweeps") / "hand", drop=("uniform-4",), tamper=("none-2",))
    return run_analysis(directory)


def test_writes_markdown_html_and_table_files_into_the_sweep_directory(report):
    assert report.markdown == report.directory / "report.md" and report.markdown.is_file()
    assert report.html == report.directory / "report.html" and report.html.is_file()
    for t in report.tables:
        assert (report.directory / "report_files" / "tables" / f"{t.key}.csv").read_text() == t.to_csv()
        assert (report.directory / "report_files" / "tables" / f"{t.key}.tex").read_text() == t.to_latex()


def test_markdown_answers_first_then_design_study_tables_and_exploratory(report):
    md = report.markdown.read_text()
    assert f"`{AnalysisPlan.model_validate(ANALYSIS).plan_hash()}`" in md and report.plan_hash in md
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Answers", "## Design check"]
    assert headings.index("## Study tables") < headings.index("## Exploratory")
    answers = md[md.index("## Answers"):md.index("## Design check")].strip().splitlines()[1:]
    answers = [a for a in answers if a]
    assert len(answers) == 4  # one sentence per declared hypothesis
    assert answers[0].startswith("- Primary: method.cost=uniform vs method.cost=circumplex on p_mtl: Δ (A − B) =")
    assert all(a.rstrip(".").endswith(("supported", "cannot be decided by this design")) for a in answers)
    assert "Holm p = " in answers[1] and "in family f of 3" in answers[1]
    for title in ("Method table (study Table I)", "Cost controls (study Table II)", "Per-class EXPR F1",
                  "Error structure, exploratory (study Table XI)", "Class isolation vs ΔF1",
                  "Representational alignment", "Pairing issues"):
        assert title in md
    exploratory = md[md.index("## Exploratory"):]
    assert "Exploratory: the declared contrasts" in exploratory and "Pairing issues" in exploratory
    for figure in report.figures:
        assert figure.is_file() and f"]({figure.relative_to(report.directory).as_posix()})" in md
    names = {f.name for f in report.figures}
    assert {"circumplex_0.png", "confusion_0.png", "paired_p_mtl.png"} <= names


def test_unmatched_and_integrity_violations_are_reported(report):
    md = report.markdown.read_text()
    warnings = md[md.index("## Warnings"):md.index("## Study tables")]
    assert "could not be paired" in warnings and "matched-seed integrity violated" in warnings
    issues = report.table("pairing_issues").to_csv()
    assert "circumplex-4" in issues and "no B trial with seed 4" in issues      # its uniform partner is missing
    assert "circumplex-2 / none-2" in issues and "tampered" in issues
    circ_vs_none = report.analysis.hypotheses[1]
    assert circ_vs_none.hypothesis.contrast_label == "method.cost=circumplex vs method.cost=none"
    assert circ_vs_none.n == 5 and 2 not in circ_vs_none.seeds


def test_html_is_self_contained_with_tables_and_embedded_figures(report):
    html = report.html.read_text()
    assert html.count("<table class='affsweep'") == len(report.tables)
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(report.figures) >= 3
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # nothing to fetch
    assert report.plan_hash in html


def test_isolation_uses_the_true_circumplex_and_mean_class_deltas(report):
    (row,) = report.analysis.isolation
    cost = np.linalg.norm(CENTROIDS[:, None] - CENTROIDS[None], axis=-1)
    iso = np.where(np.eye(4, dtype=bool), np.inf, cost).min(axis=1)
    np.testing.assert_allclose(row.isolation, iso)
    np.testing.assert_allclose(row.delta_f1, [DELTA_F1[c] for c in CLASSES], atol=1e-12)
    assert row.result.statistic == pytest.approx(st.spearmanr(iso, list(DELTA_F1.values())).statistic)
    assert row.result.exact and row.result.n_permutations == 24


def test_degenerate_pair_is_marked_in_the_per_class_table(report):
    classes = report.table("per_class").column("Class")
    assert classes == ["Neutral", "Anger †", "Fear †", "Happy"]


def test_cli_writes_the_report_and_skips_an_unreachable_mlflow(tmp_path, capsys):
    directory = build_sweep(tmp_path / "hand")
    out = tmp_path / "out"
    assert main([str(directory), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out / 'report.md'}" in captured.out and (out / "report.html").is_file()
    assert "not reachable" in captured.err  # mlflow.json points at a closed port: reported, not fatal


def test_cli_names_a_missing_sweep_and_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("affsweep analyze:") and "nope" in err[0]


def test_analysis_never_imports_torch_trainers_or_orchestrator():
    code = ("import sys, analysis.report, analysis.study, analysis.tables, analysis.figures, "
            "analysis.errors, analysis.paired, analysis.pairing, analysis.results, analysis.plan, analysis.isolation, "
            "analysis.hypotheses; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainers', 'orchestrator', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium")
def test_html_renders_in_headless_chromium_with_tables_and_figures(report, tmp_path):
    # 1) the DOM after load: every table present and every embedded image decoded
    probe = tmp_path / "probe.html"
    check = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.title=['tables',document.querySelectorAll('table.affsweep').length,"
             "'images',i.length,'decoded',i.filter(x=>x.complete&&x.naturalWidth>100).length].join(':');});</script>")
    probe.write_text(report.html.read_text().replace("</body>", check + "</body>"))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    n_tables, n_images = len(report.tables), len(report.figures)
    assert f"<title>tables:{n_tables}:images:{n_images}:decoded:{n_images}</title>" in dom

    # 2) a screenshot: table header shading and figure colours are on screen
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1280,14000", f"--screenshot={shot}", report.html.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)

    def count(rgb, tol=6):
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())

    assert count((242, 244, 247)) > 5_000      # the tables' header background (#f2f4f7)
    assert count((192, 57, 43), tol=20) > 50    # the degenerate pair's red in the circumplex figure
    assert count((8, 48, 107), tol=30) > 50     # the darkest blue of the confusion matrices
