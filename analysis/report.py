"""The sweep report: ``report.md`` and a self-contained ``report.html``, optionally logged to MLflow.

:func:`run_analysis` loads a sweep (directory, results file, or MLflow), analyses it
(:func:`analysis.study.analyze`), renders every table and figure and writes::

    <out>/report.md                    Answers first, then the design check, the study's tables and the
                                       exploratory results; figures linked from report_files/
    <out>/report.html                  the same, self-contained: figures embedded as base64
    <out>/analysis.json                every declared hypothesis (contrast, metric, stratum, direction,
                                       role/family, per-seed differences, Δ, CI, p, Holm p, min
                                       attainable p, decision), the plan hash and the warnings
    <out>/report_files/figures/*.png
    <out>/report_files/tables/*.{csv,tex}

:func:`log_report_to_mlflow` attaches those files to the sweep's parent run through
``MlflowClient`` with an explicit run id. :func:`main` is ``affsweep analyze``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from analysis.hypotheses import answer
from analysis.plan import AnalysisPlan, selector_label
from analysis.results import SweepResults, load_sweep
from analysis.study import Analysis, analyze
from analysis.tables import Table, all_tables, metric_name

__all__ = ["AnalysisReport", "analysis_json", "log_report_to_mlflow", "main", "run_analysis"]

REPORT_FILES = "report_files"
MAX_DIFFERENCE_ROWS = 30
ANSWER_TABLES = ("hypotheses", "design")  # the tables of the first two sections
EXPLORATORY_TABLES = ("exploratory", "pairing_issues")  # the last section


@dataclass(frozen=True, eq=False)
class AnalysisReport:
    directory: Path
    markdown: Path
    html: Path
    tables: tuple[Table, ...]
    figures: tuple[Path, ...]
    table_files: tuple[Path, ...]
    analysis: Analysis
    plan_hash: str
    json: Path

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.analysis.warnings

    @property
    def paths(self) -> list[Path]:
        """Every file written, report first (what :func:`log_report_to_mlflow` uploads)."""
        return [self.markdown, self.html, self.json, *self.figures, *self.table_files]

    def table(self, key: str) -> Table:
        for t in self.tables:
            if t.key == key:
                return t
        raise KeyError(f"no table {key!r}; tables are {[t.key for t in self.tables]}")


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in text)
    return "_".join(part for part in keep.split("_") if part)[:60] or "x"


def _write_figures(analysis: Analysis, directory: Path) -> list[tuple[str, Path]]:
    from analysis import figures

    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    for i, (stratum, payload) in enumerate(analysis.circumplexes):
        label = ", ".join(f"{k}={v}" for k, v in stratum) or analysis.sweep.name
        path = directory / f"circumplex_{i}.png"
        figures.plot_circumplex(payload["centroids"], payload["class_names"], payload.get("radial_se"),
                                payload.get("degenerate_pair"), path=path, title=f"Circumplex — {label}")
        written.append((f"Class centroids on the circumplex ({label})", path))

    strata = list(dict.fromkeys(c.stratum for c in analysis.confusions))
    for i, stratum in enumerate(strata):
        panels = [c for c in analysis.confusions if c.stratum == stratum]
        names = panels[0].class_names
        panels = [p for p in panels if p.class_names == names]
        path = directory / f"confusion_{i}.png"
        figures.plot_confusions([p.matrix for p in panels], names,
                                [f"{p.condition} ({p.n_trials} seeds)" for p in panels], path=path)
        label = ", ".join(f"{k}={v}" for k, v in stratum) or "all"
        written.append((f"Confusion matrices summed over paired seeds, row-normalised ({label})", path))

    declared = analysis.hypotheses
    for metric in dict.fromkeys(r.hypothesis.metric for r in declared):
        comps = [r for r in declared if r.hypothesis.metric == metric and r.n][:MAX_DIFFERENCE_ROWS]
        if not comps:
            continue
        labels = [f"[{'P' if r.hypothesis.family is None else r.hypothesis.family}] {r.hypothesis.contrast_label}"
                  + (f" | {selector_label(dict(r.stratum))}" if r.stratum else "") for r in comps]
        path = directory / f"paired_{_slug(metric)}.png"
        figures.plot_paired_differences({lab: r.differences for lab, r in zip(labels, comps)},
                                        {lab: tuple(r.ci) for lab, r in zip(labels, comps)},
                                        metric=metric_name(metric), path=path)
        written.append((f"Per-seed paired differences A − B of the declared hypotheses on {metric_name(metric)} "
                        f"([P] primary, else the family)", path))

    for i, dose in enumerate(analysis.dose_response):
        label = ", ".join(f"{k}={v}" for k, v in dose.stratum) or "all"
        path = directory / f"dose_response_{i}.png"
        figures.plot_dose_response(dose.lam, dose.series, dose.class_series or None, metric=metric_name(dose.metric),
                                   path=path, title=f"{metric_name(dose.metric)} vs λ ({label})")
        written.append((f"Dose–response over λ ({label})", path))
    return written


def sequential_of(analysis: Analysis):
    """The sequential decisions (analysis.looks) of a plan with looks, else None; the seeds' order is
    grid.seed as written in sweep.yaml (the order a sequential run adds them in)."""
    from analysis.looks import differences_in_seed_order, sequential_state

    plan = analysis.plan
    if plan.looks is None:
        return None
    written = ((analysis.sweep.spec or {}).get("grid") or {}).get("seed")
    order = list(written) if written else sorted({int(s) for s in analysis.sweep.results["seed"]})
    return sequential_state(plan, [differences_in_seed_order(r.seeds, r.differences, order)
                                   for r in analysis.hypotheses])


def _sequential_words(analysis: Analysis) -> list[str | None]:
    from analysis.looks import decision_word

    state = sequential_of(analysis)
    if state is None:
        return [None] * len(analysis.hypotheses)
    plan = analysis.plan
    return [f"sequential design (looks {plan.looks}, {plan.spending}): {decision_word(d, plan)}"
            for d in state.decisions]


def _answers(analysis: Analysis) -> list[str]:
    if not analysis.hypotheses:
        return ["The plan declares no hypothesis, so nothing is confirmed: every result below is exploratory."]
    return [answer(r, words) for r, words in zip(analysis.hypotheses, _sequential_words(analysis))]


def _sequential_json(r, decision, words: str) -> dict:
    """A hypothesis's entry of analysis.json under a sequential design: the decision is the
    sequential one (the fixed-n test on all seeds is kept as ``fixed_n_decision``)."""
    seq = None if decision is None else {
        "status": decision.status, "look": decision.look, "n": decision.n,
        "mean_difference": decision.mean_difference,
        "critical_mean": decision.critical_mean if decision.critical_mean == decision.critical_mean else None}
    return {**r.to_json(), "fixed_n_decision": r.decision, "decision": words, "sequential": seq,
            "decided_at_look": decision.look if decision is not None and decision.decided else None}


def _header(analysis: Analysis, plan_hash: str) -> list[str]:
    sweep, plan = analysis.sweep, analysis.plan
    frame = sweep.results
    families = ", ".join(f"{name} (m = {len(plan.family(name))})" for name in plan.families) or "none"
    return [f"trials: {len(frame)} ({int((frame['status'].astype(str) == 'done').sum())} done)",
            f"axes: {', '.join(sweep.axes) or '(none)'}; varying: {', '.join(analysis.varying_axes) or '(none)'}",
            f"analysis plan hash: `{plan_hash}` (source: {analysis.plan_source}); primaries: {len(plan.primary)}; "
            f"families: {families}; α = {plan.alpha:g}",
            f"baseline: {selector_label(dict(analysis.baseline)) if analysis.baseline else '(none)'}; "
            f"exploratory metrics: {', '.join(plan.exploratory) or '(none)'}; bootstrap resamples = "
            f"{plan.n_resamples}; seed = {plan.seed}"]


def _split(tables: Sequence[Table]) -> tuple[list[Table], list[Table], list[Table]]:
    first = [t for k in ANSWER_TABLES for t in tables if t.key == k]
    last = [t for k in EXPLORATORY_TABLES for t in tables if t.key == k]
    middle = [t for t in tables if t.key not in (*ANSWER_TABLES, *EXPLORATORY_TABLES)]
    return first, middle, last


def _markdown(analysis: Analysis, tables: Sequence[Table], figures: Sequence[tuple[str, Path]], out: Path,
              plan_hash: str) -> str:
    first, middle, last = _split(tables)
    lines = [f"# Analysis of sweep `{analysis.sweep.name}`", "", "## Answers", ""]
    lines += [f"- {a}" for a in _answers(analysis)]
    lines += ["", "## Design check", ""]
    lines += [t.to_markdown() for t in first if t.key == "design"] or ["No declared hypothesis.", ""]
    lines += [t.to_markdown() for t in first if t.key == "hypotheses"]
    lines += ["## Sweep", ""] + [f"- {x}" for x in _header(analysis, plan_hash)]
    lines += ["", "## Warnings", ""]
    lines += [f"- ⚠ {w}" for w in analysis.warnings] or ["- none"]
    lines += ["", "## Study tables", "",
              "*Only the declared hypotheses above are confirmatory; every p-value below is exploratory.*", ""]
    for t in middle:
        lines += [t.to_markdown(), ""]
    lines += ["## Exploratory", "",
              "*Exploratory results: p-values are shown for orientation, not adjusted, and not findings.*", ""]
    for t in last:
        lines += [t.to_markdown(), ""]
    lines += ["## Figures", ""]
    for caption, path in figures:
        lines += [f"![{caption}]({path.relative_to(out).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
div.wide{max-width:100%;overflow-x:auto}li,p{overflow-wrap:anywhere}
table.affsweep{border-collapse:collapse;margin:1.2em 0 .3em;font-size:.86em}
table.affsweep caption{text-align:left;font-weight:600;padding:.3em 0}
table.affsweep th,table.affsweep td{border:1px solid #ccc;padding:.25em .55em;text-align:left}
table.affsweep td{white-space:nowrap}
table.legend td{white-space:normal;overflow-wrap:anywhere}abbr{text-decoration:underline dotted}
table.affsweep th{background:#f2f4f7}table.affsweep tr:nth-child(even) td{background:#fafbfc}
p.note{font-size:.8em;color:#555;margin:.1em 0}.warn{color:#a04000}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444}
code{background:#f4f4f4;padding:0 .25em}
"""


LABEL_LIMIT = 40  # an HTML cell label longer than this shows as a code (L1, L2 ...) with a legend


def _short_labels(tables: Sequence[Table]) -> dict[str, str]:
    """Long text cells (condition and contrast labels) -> codes, numbered in reading order. Only the
    HTML report abbreviates; Markdown, CSV and LaTeX keep every label whole."""
    out: dict[str, str] = {}
    for t in tables:
        for row in t.rows:
            for cell in row:
                if isinstance(cell, str) and len(cell) > LABEL_LIMIT and cell not in out:
                    out[cell] = f"L{len(out) + 1}"
    return out


def _wide(table: Table, short: dict[str, str] | None = None) -> str:
    """A table in its own scrolling box, so a wide one never widens the page; its abbreviated labels
    (``short``) are spelled out in a legend under it."""
    used = {c for row in table.rows for c in row if isinstance(c, str)} & set(short or ())
    legend = ""
    if used:
        rows = "".join(f"<tr><td>{short[label]}</td><td>{html.escape(label)}</td></tr>"
                       for label in sorted(used, key=lambda x: int(short[x][1:])))
        legend = (f"<table class='affsweep legend'><caption>Labels</caption><thead><tr><th>code</th>"
                  f"<th>label</th></tr></thead><tbody>{rows}</tbody></table>")
    return f"<div class='wide'>{table.to_html(short)}{legend}</div>"


def _html(analysis: Analysis, tables: Sequence[Table], figures: Sequence[tuple[str, Path]], plan_hash: str) -> str:
    first, middle, last = _split(tables)
    short = _short_labels([*first, *middle, *last])

    def items(lines: Iterable[str], cls: str = "") -> str:
        attr = f" class='{cls}'" if cls else ""
        return "".join(f"<li{attr}>{html.escape(s).replace('`', '')}</li>" for s in lines) or "<li>none</li>"

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>affsweep analysis — {html.escape(analysis.sweep.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Analysis of sweep <code>{html.escape(analysis.sweep.name)}</code></h1>",
        f"<h2 id='answers'>Answers</h2><ul id='answer-list'>{items(_answers(analysis))}</ul>",
        "<h2 id='design-check'>Design check</h2>",
        *[_wide(t, short) for t in first if t.key == "design"],
        *[_wide(t, short) for t in first if t.key == "hypotheses"],
        f"<h2>Sweep</h2><ul>{items(_header(analysis, plan_hash))}</ul>",
        f"<p>plan hash: <code id='plan-hash'>{plan_hash}</code></p>",
        f"<h2>Warnings</h2><ul id='warnings'>{items((f'⚠ {w}' for w in analysis.warnings), 'warn')}</ul>",
        "<h2>Study tables</h2><p class='note'>Only the declared hypotheses above are confirmatory; every p-value "
        "below is exploratory.</p>",
        *[_wide(t, short) for t in middle],
        "<h2 id='exploratory'>Exploratory</h2><p class='note'>Exploratory results: p-values are shown for "
        "orientation, not adjusted, and not findings.</p>",
        *[_wide(t, short) for t in last],
        "<h2>Figures</h2>",
    ]
    for caption, path in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def analysis_json(analysis: Analysis, plan_hash: str) -> dict:
    """The machine-readable result (``analysis.json``): what tests and users read."""
    plan = analysis.plan
    return {
        "sweep": analysis.sweep.name,
        "plan_hash": plan_hash,
        "plan_source": analysis.plan_source,
        "plan": json.loads(plan.canonical_json()),
        "alpha": plan.alpha,
        "families": {name: len(plan.family(name)) for name in plan.families},
        "hypotheses": _hypotheses_json(analysis),
        "sequential": None if plan.looks is None else {"looks": plan.looks, "spending": plan.spending},
        "answers": _answers(analysis),
        "warnings": list(analysis.warnings),
    }


def _hypotheses_json(analysis: Analysis) -> list[dict]:
    state = sequential_of(analysis)
    if state is None:
        return [r.to_json() for r in analysis.hypotheses]
    return [_sequential_json(r, d, w) for r, d, w in
            zip(analysis.hypotheses, state.decisions, _sequential_words(analysis))]


def run_analysis(source=None, out: str | os.PathLike | None = None, plan: AnalysisPlan | None = None,
                 tracking_uri: str | None = None, sweep: str | None = None) -> AnalysisReport:
    """Analyse a sweep and write ``report.md`` / ``report.html`` into the sweep directory (or ``out``).

    ``source``: a sweep directory, a results file, a loaded :class:`SweepResults`, or a sweep name
    (with ``tracking_uri`` it is loaded from MLflow). ``plan`` overrides the sweep's ``analysis:``
    block; without either, a plan is inferred and the report says so.
    """
    data = source if isinstance(source, SweepResults) else load_sweep(source, tracking_uri=tracking_uri, sweep=sweep)
    if out is None:
        if data.directory is None:
            raise ValueError(f"sweep {data.name!r} was loaded from MLflow: pass out= to say where the report goes")
        out = data.directory
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze(data, plan)
    plan_hash = analysis.plan.plan_hash()
    tables = tuple(all_tables(analysis))
    figures = _write_figures(analysis, out / REPORT_FILES / "figures")
    table_dir = out / REPORT_FILES / "tables"
    table_dir.mkdir(parents=True, exist_ok=True)
    table_files = []
    for t in tables:
        for suffix, text in ((".csv", t.to_csv()), (".tex", t.to_latex())):
            path = table_dir / f"{t.key}{suffix}"
            path.write_text(text, encoding="utf-8")
            table_files.append(path)
    json_path = out / "analysis.json"
    json_path.write_text(json.dumps(analysis_json(analysis, plan_hash), indent=2, default=str) + "\n",
                         encoding="utf-8")
    markdown = out / "report.md"
    markdown.write_text(_markdown(analysis, tables, figures, out, plan_hash), encoding="utf-8")
    report_html = out / "report.html"
    report_html.write_text(_html(analysis, tables, figures, plan_hash), encoding="utf-8")
    return AnalysisReport(out, markdown, report_html, tables, tuple(p for _, p in figures), tuple(table_files),
                          analysis, plan_hash, json_path)


def log_report_to_mlflow(tracking_uri: str, parent_run_id: str, paths: Iterable[str | os.PathLike],
                         artifact_path: str = "report") -> list[str]:
    """Attach report files to the sweep's parent run (``MlflowClient.log_artifact`` with its run id).

    Files under a ``report_files/`` folder keep their sub-folder (``report/figures/x.png``).
    Returns the artifact paths written.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    logged = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such report file to log")
        sub = artifact_path
        if path.parent.parent.name == REPORT_FILES:
            sub = f"{artifact_path}/{path.parent.name}"
        client.log_artifact(parent_run_id, str(path), artifact_path=sub)
        logged.append(f"{sub}/{path.name}")
    client.set_tag(parent_run_id, "affsweep.report", f"{artifact_path}/report.html")
    return logged


def _reachable(uri: str, timeout: float = 1.0) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``affsweep analyze SWEEP_DIR|SWEEP_NAME [--out DIR] [--tracking-uri URI] [--no-mlflow]``."""
    parser = argparse.ArgumentParser(
        prog="affsweep analyze",
        description="Pair a sweep's trials by seed, test the planned contrasts and write report.md/report.html.")
    parser.add_argument("sweep", help="sweep directory, results file (.parquet/.csv), or sweep name")
    parser.add_argument("--out", help="where to write the report (default: the sweep directory)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (to load the sweep by name, and to log the report)")
    parser.add_argument("--storage", help="directory holding sweep directories (default $AFFSWEEP_STORAGE)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to the sweep's MLflow run")
    args = parser.parse_args(argv)
    try:
        data = load_sweep(args.sweep, tracking_uri=args.tracking_uri, storage=args.storage)
        out = args.out or data.directory or Path.cwd() / f"{data.name}-report"
        report = run_analysis(data, out=out)
    except (FileNotFoundError, LookupError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"affsweep analyze: {message}", file=sys.stderr)
        return 2
    print(f"wrote {report.markdown}")
    print(f"wrote {report.html}")
    print(f"wrote {report.json}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    info = data.mlflow or {}
    uri, parent = args.tracking_uri or info.get("tracking_uri"), info.get("parent_run_id")
    if args.no_mlflow or not uri or not parent:
        return 0
    if not _reachable(uri):
        print(f"warning: MLflow at {uri} is not reachable; the report was not logged "
              f"(log it later with analysis.report.log_report_to_mlflow)", file=sys.stderr)
        return 0
    try:
        logged = log_report_to_mlflow(uri, parent, report.paths)
    except Exception as exc:  # the report on disk stands; MLflow errors are reported, not fatal
        print(f"warning: logging the report to MLflow run {parent} failed: {exc}", file=sys.stderr)
        return 0
    print(f"logged {len(logged)} report file(s) to MLflow run {parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
