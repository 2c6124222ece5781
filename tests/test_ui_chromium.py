"""What a person sees, rendered by headless Chromium (Debian's ``chromium``, installed when absent;
skipped when it cannot be):

- the MLflow UI (``mlflow ui`` on a small store written by ``SweepTracker``, as a sweep writes it)
  opens the experiment on its runs table (the experiment is a "Model training" one) and lists the
  per-condition summary runs with their ``<metric>/mean`` columns without a click;
- ``report.html`` has no horizontal overflow at 1280 px (the document's scroll width).

Screenshots stay in the test's tmp dir. Chromium runs headless, without sandbox, GPU, background
networking, component updates or sync, with a fresh profile; every process started here is stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.mlflow_ui import landing_url, save_view, view_key
from tests.support.services import free_ports

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"apt-get could not install chromium: {done.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium installed, but not on PATH")
    return found


def render(url: str, tmp: Path, name: str, width: int = 1400, budget_ms: int = 30000, script: str = "") -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time (``--dump-dom``), and a screenshot."""
    browser = chromium()
    common = [browser, *CHROMIUM_FLAGS, f"--window-size={width},900", f"--virtual-time-budget={budget_ms}"]
    shot = subprocess.run([*common, f"--user-data-dir={tmp / (name + '-profile-shot')}",
                           f"--screenshot={tmp / (name + '.png')}", url], capture_output=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert shot.returncode == 0, shot.stderr[-2000:]
    done = subprocess.run([*common, f"--user-data-dir={tmp / (name + '-profile')}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def fake_sweep_store(root: Path) -> tuple[str, str]:
    """Two conditions x two seeds, written through SweepTracker as a sweep writes them."""
    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = SweepTracker(uri, "ui-demo", "ui-demo", artifact_location=str(root / "artifacts"))
    (root / "sweep.yaml").write_text("name: ui-demo\n")
    parent = tracker.ensure_parent("0" * 12, root / "sweep.yaml")
    for cost, base in (("circumplex", 0.40), ("none", 0.30)):
        results = []
        for seed in (0, 1):
            tid = f"{cost[:4]}{seed}"
            run = tracker.client.create_run(tracker.experiment_id, run_name=f"method.cost={cost} seed={seed}",
                                            tags={"mlflow.parentRunId": parent, "affsweep.sweep": "ui-demo",
                                                  "affsweep.kind": "trial", "affsweep.trial_id": tid})
            tracker.client.log_metric(run.info.run_id, "p_mtl", base + seed / 100)
            tracker.client.set_terminated(run.info.run_id)
            results.append({"trial_id": tid, "p_mtl": base + seed / 100})
        tracker.refresh_summary({"method.cost": cost}, f"method.cost={cost}", cost, results, planned=2)
    tracker.finish_parent("FINISHED")
    save_view(tracker.client, tracker.experiment_id, "ui-demo", ["method.cost"])  # as the driver does
    return uri, tracker.experiment_id


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(900)
def test_mlflow_ui_opens_on_the_summary_runs_and_their_means(tmp_path):
    chromium()
    uri, experiment_id = fake_sweep_store(tmp_path)
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with open(tmp_path / "ui.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(0.5)
        url = landing_url(f"http://127.0.0.1:{port}", experiment_id, view_key("ui-demo"))  # what is printed
        dom = render(url, tmp_path, "mlflow")
        (tmp_path / "mlflow.html").write_text(dom)
        # the runs table (not the GenAI overview), without a click: summary runs with their means
        assert "Model training" in dom and "Runs" in dom, dom[-3000:]
        assert "summary method.cost=circumplex" in dom and "summary method.cost=none" in dom, dom[-3000:]
        for column in ("metrics.`p_mtl/mean`", "metrics.`p_mtl/std`", "tags.`method.cost`"):
            assert f'col-id="{column}"' in dom, column  # in the grid's rendered (visible) columns
        assert ">0.405<" in dom and ">0.305<" in dom  # the two conditions' p_mtl/mean
        assert "method.cost=circumplex seed=0" not in dom  # trial runs stay folded under the sweep's run
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def long_label_sweep(tmp_path: Path) -> Path:
    import pandas as pd
    import yaml

    from tests.support.hand_sweep import build_sweep

    sweep = build_sweep(tmp_path / "hand")
    # long axis values (as real backbones and presets have) make the condition labels and tables wide
    frame = pd.read_parquet(sweep / "results.parquet")
    frame["dataset.preset"] = "affwild2_like_balanced_long_preset"
    frame.to_parquet(sweep / "results.parquet", index=False)
    spec = yaml.safe_load((sweep / "sweep.yaml").read_text())
    spec["grid"]["dataset.preset"] = ["affwild2_like_balanced_long_preset"]
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(spec))
    return sweep


def test_report_html_abbreviates_long_labels_with_a_legend(tmp_path):
    import re

    from analysis.report import LABEL_LIMIT, run_analysis

    report = run_analysis(long_label_sweep(tmp_path))
    page = report.html.read_text()
    legend = dict(re.findall(r"<tr><td>(L\d+)</td><td>([^<]*)</td></tr>", page))
    assert legend and all(len(label) > LABEL_LIMIT for label in legend.values()), legend
    assert sorted(legend, key=lambda c: int(c[1:])) == [f"L{i}" for i in range(1, len(legend) + 1)]
    for code, label in legend.items():
        assert f"<abbr title='{label}'>{code}</abbr>" in page  # in the table, with its tooltip
        assert f"<td>{label}</td>" not in page.replace(f"<td>{code}</td><td>{label}</td>", "")
    markdown = report.markdown.read_text()
    import html

    assert all(html.unescape(label) in markdown for label in legend.values())  # Markdown keeps them whole
    assert not re.search(r"\bL\d+\b", markdown)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(600)
def test_report_html_has_no_horizontal_overflow_at_1280px(tmp_path):
    from analysis.report import run_analysis

    chromium()
    report = run_analysis(long_label_sweep(tmp_path))
    probe = tmp_path / "probe.html"
    measure = ("<script>const d=document.documentElement;"
               "document.body.setAttribute('data-width', d.scrollWidth + 'x' + d.clientWidth);</script></body>")
    probe.write_text(report.html.read_text().replace("</body>", measure))
    dom = render(probe.as_uri(), tmp_path, "report", width=1280, budget_ms=5000)
    scroll, client = map(int, dom.split("data-width=\"", 1)[1].split("\"", 1)[0].split("x"))
    assert client == 1280 and scroll <= client, f"report is {scroll} px wide in a {client} px window"
    assert "class=\"wide\"" in dom  # the tables sit in their own scroll box
    assert "<caption>Labels</caption>" in dom  # long labels abbreviated, with their legend


def test_store_is_a_model_training_experiment_with_top_level_summaries(tmp_path):
    """What the UI reads (checked without a browser): the experiment's kind tag, and which runs are
    top-level (the UI's runs table lists top-level runs and folds children under their parent)."""
    from mlflow.tracking import MlflowClient

    uri, experiment_id = fake_sweep_store(tmp_path)
    client = MlflowClient(uri)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment_id])
    top = sorted(r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert top == ["summary method.cost=circumplex", "summary method.cost=none", "ui-demo"]
    assert len(runs) == 7  # + 4 trial runs under the sweep's run


def test_landing_url_and_shared_view(tmp_path):
    """The printed URL opens the Model-training runs table through the sweep's shared view (a tag)."""
    import json

    from mlflow.tracking import MlflowClient

    uri, experiment_id = fake_sweep_store(tmp_path)
    assert landing_url("http://127.0.0.1:5000/", experiment_id, "affsweep-ui-demo") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=affsweep-ui-demo")
    assert view_key("my sweep/1") == "affsweep-my_sweep_1"
    tags = MlflowClient(uri).get_experiment(experiment_id).tags
    state = json.loads(tags["mlflow.sharedViewState.affsweep-ui-demo"])
    assert state["columnOrder"][:3] == ["attributes.`Run Name`", "metrics.`p_mtl/mean`", "metrics.`p_mtl/std`"]
    assert "tags.`method.cost`" in state["selectedColumns"]
    assert state["searchFilter"] == "tags.`affsweep.sweep` = 'ui-demo'"
