"""The study's tables, built from the result objects of :func:`analysis.study.analyze`.

Table code only selects and formats: every number comes from a result object
(:class:`~analysis.contrasts.MetricComparison`, :class:`~analysis.study.ConditionStats`,
:class:`~analysis.isolation.CorrelationResult`); nothing is recomputed here. Each :class:`Table`
renders as Markdown, HTML, CSV and LaTeX.

Shapes (study numbering): the declared hypotheses and the design check first; then method table
(I), cost controls with p vs base and vs circumplex (II), cross-dataset (IV), per-class F1
(VIII/IX), per-AU F1 (X), error structure (XI: the ``error_structure`` family with Holm p when
declared, else exploratory), class isolation vs ΔF1 (§6.3), RSA (XII); then the exploratory
contrasts and the pairing issues.

Only a declared hypothesis is confirmatory: every other p-value is labelled exploratory and never
bolded (:class:`PValue` bolds nothing unless asked to).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analysis.contrasts import MetricComparison, SampleStats
from analysis.pairing import Items, stratum_label
from analysis.study import COST_AXIS, DATASET_AXES, REFERENCE_COST, UNIFORM_COST, Analysis

__all__ = [
    "Delta",
    "Interval",
    "MeanStd",
    "PValue",
    "Table",
    "all_tables",
    "cost_control_table",
    "cross_dataset_table",
    "design_table",
    "error_structure_table",
    "exploratory_table",
    "hypotheses_table",
    "isolation_table",
    "method_table",
    "pairing_issues_table",
    "per_au_table",
    "per_class_table",
    "rsa_table",
]

METRIC_NAMES = {
    "p_mtl": "P_MTL", "va_ccc": "VA (CCC)", "expr_f1": "EXPR (F1)", "au_f1": "AU (F1)",
    "error_severity": "Error severity", "quadrant_keep": "Quadrant keep",
    "affect_weighted_acc": "Affect-weighted acc.", "rsa_rho": "RSA ρ", "expr_acc": "EXPR acc.",
}


def metric_name(metric: str) -> str:
    if metric.startswith(("expr_f1/", "au_f1/")):
        return f"F1 {metric.split('/', 1)[1]}"
    return METRIC_NAMES.get(metric, metric)


# --- cells -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float
    digits: int = 3

    @classmethod
    def of(cls, stats: SampleStats | None, digits: int = 3) -> MeanStd | None:
        return None if stats is None or stats.n == 0 else cls(stats.mean, stats.std, digits)

    def text(self, fmt: str) -> str:
        d = 6 if fmt == "csv" else self.digits
        if not math.isfinite(self.std):
            return f"{self.mean:.{d}f}"
        pm = r" $\pm$ " if fmt == "latex" else " ± "
        return f"{self.mean:.{d}f}{pm}{self.std:.{d}f}"


@dataclass(frozen=True)
class Delta:
    value: float
    digits: int = 3

    def text(self, fmt: str) -> str:
        if not math.isfinite(self.value):
            return "–"
        return f"{self.value:+.{6 if fmt == 'csv' else self.digits}f}"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    digits: int = 3

    def text(self, fmt: str) -> str:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "–"
        d = 6 if fmt == "csv" else self.digits
        return f"[{self.low:+.{d}f}, {self.high:+.{d}f}]"


@dataclass(frozen=True)
class PValue:
    """A p-value. Never bold unless ``bold`` (a declared hypothesis that is supported): an
    exploratory p at or below alpha is not a finding."""

    value: float
    alpha: float = 0.05
    bold: bool = False

    @property
    def significant(self) -> bool:
        return self.bold and math.isfinite(self.value) and self.value <= self.alpha

    def text(self, fmt: str) -> str:
        if not math.isfinite(self.value):
            return "–"
        s = f"{self.value:.6g}" if fmt == "csv" else f"{self.value:.4g}"
        if self.significant and fmt == "md":
            return f"**{s}**"
        if self.significant and fmt == "latex":
            return rf"\textbf{{{s}}}"
        return s


def _cell_text(cell: Any, fmt: str) -> str:
    if cell is None:
        return "–"
    if hasattr(cell, "text"):
        return cell.text(fmt)
    if isinstance(cell, float):
        if not math.isfinite(cell):
            return "–"
        return f"{cell:.6g}" if fmt == "csv" else f"{cell:.3f}"
    return str(cell)


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


@dataclass(frozen=True)
class Table:
    """A titled grid of cells with footnotes; renders as Markdown, HTML, CSV or LaTeX."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    notes: tuple[str, ...] = ()

    def cells(self, fmt: str) -> list[list[str]]:
        return [[_cell_text(c, fmt) for c in row] for row in self.rows]

    def to_markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", r"\|")

        lines = [f"**{self.title}**", "", "| " + " | ".join(esc(c) for c in self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.cells("md")]
        if self.notes:
            lines += [""] + [f"*{note}*  " for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_html(self, short: dict[str, str] | None = None) -> str:
        """``short``: label text -> the code shown instead (the full text in its tooltip and a legend)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row, raw in zip(self.cells("html"), self.rows):
            tds = []
            for text, cell in zip(row, raw):
                strong = isinstance(cell, PValue) and cell.significant
                inner = f"<strong>{html.escape(text)}</strong>" if strong else html.escape(text)
                if short and isinstance(cell, str) and text in short:
                    inner = f"<abbr title='{html.escape(text)}'>{html.escape(short[text])}</abbr>"
                tds.append(f"<td>{inner}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in self.notes)
        return (f"<table class='affsweep' id='table-{html.escape(self.key)}'>"
                f"<caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{notes}")

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.cells("csv"))
        return buffer.getvalue()

    def to_latex(self) -> str:
        spec = "l" * len(self.columns)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(self.title)}}}",
                 rf"\label{{tab:{self.key}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(_latex_escape(c) for c in self.columns) + r" \\", r"\midrule"]
        for row, raw in zip(self.cells("latex"), self.rows):
            escaped = [t if isinstance(c, MeanStd | PValue) else _latex_escape(t) for t, c in zip(row, raw)]
            lines.append(" & ".join(escaped) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\footnotesize {_latex_escape(n)}" for n in self.notes]
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def column(self, name: str, fmt: str = "md") -> list[str]:
        """The rendered texts of one column (handy for tests and for reading a table)."""
        i = self.columns.index(name)
        return [row[i] for row in self.cells(fmt)]


# --- helpers ---------------------------------------------------------------------------------------

def _stratum_columns(strata: Sequence[Items]) -> list[str]:
    """Axes that differ between strata (the rest is constant and says nothing)."""
    keys = list(dict.fromkeys(k for s in strata for k, _ in s))
    return [k for k in keys if len({dict(s).get(k) for s in strata}) > 1]


def axis_text(value: Any) -> str | None:
    """An axis value as the YAML would show it (0.5, 1, circumplex); None stays missing."""
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _stratum_cells(stratum: Items, columns: Sequence[str]) -> list[Any]:
    values = dict(stratum)
    return [axis_text(values.get(c)) for c in columns]


EXPLORATORY = "Exploratory p-values (not declared hypotheses, not adjusted): descriptive, never a finding."


def _note_min_p(comparisons: Sequence[MetricComparison], alpha: float) -> list[str]:
    notes = []
    floors = {(c.test.n, c.test.n_zero): c.test.min_pvalue for c in comparisons}
    for (n, zeros), floor in sorted(floors.items()):
        with_zeros = f" ({zeros} zero difference(s))" if zeros else ""
        if not math.isfinite(floor) or floor > alpha:
            notes.append(f"WARNING: with n = {n} paired seeds{with_zeros} the smallest attainable p is "
                         f"{floor:.4g} > α = {alpha:g}; these p-values cannot fall to α.")
        else:
            notes.append(f"n = {n} paired seeds{with_zeros}: smallest attainable p = {floor:.4g}.")
    return notes


def _value_of(items: Items | None, key: str) -> Any:
    return dict(items or ()).get(key)


# --- tables ----------------------------------------------------------------------------------------

def method_table(analysis: Analysis) -> Table:
    """Table I: every condition's mean ± std over seeds of P_MTL, VA CCC, EXPR F1 and AU F1."""
    metrics = [m for m in ("p_mtl", "va_ccc", "expr_f1", "au_f1")
               if any(c.stats.get(m) and c.stats[m].n for c in analysis.conditions)]
    axes = list(analysis.varying_axes)
    frame = analysis.sweep.results
    sampling = None
    if "sampling" in frame.columns:  # which sampler each method trained with (when the trainer records it)
        sampling = dict(zip(frame["trial_id"].astype(str), frame["sampling"]))
    rows = []
    for c in analysis.conditions:
        values = dict(c.condition)
        cells = [axis_text(values.get(a)) for a in axes]
        if sampling is not None:
            used = sorted({str(sampling[t]) for t in c.trial_ids if sampling.get(t) is not None
                           and str(sampling[t]) not in ("", "nan")})
            cells.append(", ".join(used) or None)
        rows.append((*cells, c.n, *[MeanStd.of(c.stats.get(m)) for m in metrics]))
    notes = ["mean ± sample std (ddof = 1) over the seeds of each condition; failed trials excluded."]
    failed = sum(c.n_failed for c in analysis.conditions)
    if failed:
        notes.append(f"{failed} failed trial(s) are not included.")
    return Table("method", "Method table (study Table I): mean ± std over seeds",
                 (*axes, *(["Sampling"] if sampling is not None else []), "Seeds", *[metric_name(m) for m in metrics]),
                 tuple(rows), tuple(notes))


def cost_control_table(analysis: Analysis, metric: str | None = None) -> Table | None:
    """Table II: each ground cost with its score and the paired p against the base and the circumplex."""
    if not analysis.versus_baseline or analysis.baseline is None:
        return None
    (axis, base_value), = analysis.baseline
    metric = metric or next((m for m in ("p_mtl", "expr_f1") if analysis.versus_baseline[0].get(m)), None)
    if metric is None:
        return None
    second = "expr_f1" if metric != "expr_f1" else None
    reference = {_value_of(r.contrast.a, axis): r for r in analysis.versus_reference}
    strata = list(dict.fromkeys(c.stratum for r in analysis.versus_baseline for c in r.comparisons))
    s_cols = _stratum_columns(strata)
    alpha = analysis.plan.alpha
    rows, used = [], []
    for stratum in strata:
        first = next((r.get(metric, stratum) for r in analysis.versus_baseline if r.get(metric, stratum)), None)
        if first is None:
            continue
        base_second = next((r.get(second, stratum) for r in analysis.versus_baseline
                            if second and r.get(second, stratum)), None)
        ref_vs_base = next((r for r in analysis.versus_baseline if _value_of(r.contrast.a, axis) == REFERENCE_COST),
                           None)
        ref_p = ref_vs_base.get(metric, stratum) if ref_vs_base else None
        rows.append((*_stratum_cells(stratum, s_cols), base_value, first.b.n, MeanStd.of(first.b),
                     *([MeanStd.of(base_second.b if base_second else None)] if second else []),
                     None, PValue(ref_p.pvalue, alpha) if ref_p else None))
        for r in analysis.versus_baseline:
            value = _value_of(r.contrast.a, axis)
            c = r.get(metric, stratum)
            if c is None:
                continue
            used.append(c)
            c2 = r.get(second, stratum) if second else None
            vs_ref = reference.get(value)
            c_ref = vs_ref.get(metric, stratum) if vs_ref else None
            rows.append((*_stratum_cells(stratum, s_cols), value, c.n, MeanStd.of(c.a),
                         *([MeanStd.of(c2.a if c2 else None)] if second else []),
                         PValue(c.pvalue, alpha), PValue(c_ref.pvalue, alpha) if c_ref else None))
    with_reference = bool(analysis.versus_reference)
    if not with_reference:
        rows = [row[:-1] for row in rows]
    columns = (*s_cols, axis, "Seeds", metric_name(metric), *([metric_name(second)] if second else []),
               "p vs base", *([f"p vs {REFERENCE_COST}"] if with_reference else []))
    notes = [f"p: exact two-sided paired sign-flip test on {metric_name(metric)} over matched seeds "
             f"(base = {axis}={base_value}); each control is its own comparison (not Holm-adjusted).",
             EXPLORATORY, *_note_min_p(used, alpha)]
    title = "Cost controls (study Table II)" if axis == COST_AXIS else f"Each {axis} against the base"
    return Table("cost_controls", title, columns, tuple(rows), tuple(notes))


def cross_dataset_table(analysis: Analysis) -> Table | None:
    """Table IV: treatment vs baseline per dataset — EXPR F1, Δ, p, VA and P_MTL."""
    r = analysis.treatment_vs_baseline
    if r is None:
        return None
    dataset_axes = [a for a in DATASET_AXES if a in r.pairing.strata_axes]
    strata = list(dict.fromkeys(c.stratum for c in r.comparisons))
    if not dataset_axes or len({tuple(_value_of(s, a) for a in dataset_axes) for s in strata}) < 2:
        return None
    s_cols = _stratum_columns(strata)
    alpha = analysis.plan.alpha
    rows, used = [], []
    for stratum in strata:
        expr = r.get("expr_f1", stratum)
        va, score = r.get("va_ccc", stratum), r.get("p_mtl", stratum)
        anchor = expr or score or va
        if anchor is None:
            continue
        used.append(anchor)
        rows.append((*_stratum_cells(stratum, s_cols), anchor.n,
                     MeanStd.of(expr.b) if expr else None, MeanStd.of(expr.a) if expr else None,
                     Delta(expr.delta) if expr else None, PValue(expr.pvalue, alpha) if expr else None,
                     f"{va.b.mean:.3f} / {va.a.mean:.3f}" if va else None,
                     f"{score.b.mean:.3f} / {score.a.mean:.3f}" if score else None))
    t, b = r.contrast.a_label, r.contrast.b_label
    columns = (*s_cols, "Seeds", f"Base EXPR ({b})", f"EXPR ({t})", "ΔEXPR", "p", "VA CCC base / treat",
               "P_MTL base / treat")
    notes = [f"treatment {t} vs base {b}; p: exact paired sign-flip test on EXPR F1.", EXPLORATORY,
             *_note_min_p(used, alpha)]
    return Table("cross_dataset", "Cross-dataset comparison (study Table IV)", columns, tuple(rows), tuple(notes))


def _per_unit_tables(analysis: Analysis, prefix: str, key: str, title: str, unit: str) -> list[Table]:
    r = analysis.treatment_vs_baseline
    if r is None:
        return []
    alpha = analysis.plan.alpha
    strata = list(dict.fromkeys(c.stratum for c in r.comparisons if c.metric.startswith(prefix)))
    tables = []
    for i, stratum in enumerate(strata):
        comps = [c for c in r.comparisons if c.stratum == stratum and c.metric.startswith(prefix)]
        payload = analysis.geometry(stratum)
        pair = set()
        if payload and payload.get("degenerate_pair") is not None and prefix == "expr_f1/":
            pair = {payload["class_names"][int(j)] for j in payload["degenerate_pair"]}
        rows = []
        for c in comps:
            name = c.metric.split("/", 1)[1]
            rows.append((f"{name} †" if name in pair else name, MeanStd.of(c.b), MeanStd.of(c.a),
                         Delta(c.delta), f"{c.n_improved}/{c.n}", PValue(c.pvalue, alpha)))
        notes = [f"treatment {r.contrast.a_label} vs base {r.contrast.b_label}; Δ = mean paired difference; "
                 f"'Improved' counts seeds where the treatment is higher.", EXPLORATORY]
        if pair:
            notes.append(f"† the degenerate (co-located) pair: {' and '.join(sorted(pair))}.")
        notes += _note_min_p(comps, alpha)
        suffix = f" — {stratum_label(stratum)}" if stratum else ""
        tables.append(Table(f"{key}_{i}" if len(strata) > 1 else key, f"{title}{suffix}",
                            (unit, "Base", "Treatment", "Δ", "Improved", "p"), tuple(rows), tuple(notes)))
    return tables


def per_class_table(analysis: Analysis) -> list[Table]:
    """Tables VIII/IX: per-class EXPR F1, base vs treatment, one table per stratum (dataset)."""
    return _per_unit_tables(analysis, "expr_f1/", "per_class", "Per-class EXPR F1 (study Tables VIII/IX)", "Class")


def per_au_table(analysis: Analysis) -> list[Table]:
    """Table X: per-AU F1, base vs treatment."""
    return _per_unit_tables(analysis, "au_f1/", "per_au", "Per-AU F1 (study Table X)", "AU")


def hypotheses_table(analysis: Analysis) -> Table | None:
    """The declared hypotheses: one row each, with Δ (A − B), CI, p, Holm p in a family, decision."""
    results = analysis.hypotheses
    if not results:
        return None
    alpha = analysis.plan.alpha
    rows = []
    for r in results:
        h = r.hypothesis
        supported = r.decision == "supported"
        rows.append((h.role, h.contrast_label, stratum_label(r.stratum) if r.stratum else "–", metric_name(h.metric),
                     h.direction, r.n, Delta(r.delta), Interval(*r.ci), f"{r.n_improved}/{r.n}",
                     PValue(r.pvalue, alpha, bold=supported and h.family is None),
                     PValue(r.adjusted_pvalue, alpha, bold=supported) if h.family is not None else None,
                     f"{r.test.min_pvalue:.4g}" if math.isfinite(r.test.min_pvalue) else None, r.decision))
    notes = ["Declared in the plan (confirmatory). Δ = A − B as written; 95% CI: percentile bootstrap of the mean "
             "paired difference; 'Improved': seeds where A is better (lower for error severity).",
             "p: exact paired sign-flip test (two-sided unless a direction is declared); a primary is decided at "
             f"its own α = {alpha:g}, a family member by its Holm-adjusted p within its family."]
    return Table("hypotheses", "Declared hypotheses (confirmatory)",
                 ("Role", "Contrast (A vs B)", "Stratum", "Metric", "Direction", "Seeds", "Δ (A−B)", "95% CI",
                  "Improved", "p", "Holm p", "min p", "Decision"), tuple(rows), tuple(notes))


def exploratory_table(analysis: Analysis) -> Table | None:
    """The declared contrasts on every exploratory metric and stratum (long format), labelled so."""
    comps = [c for r in analysis.exploratory for c in r.comparisons]
    if not comps:
        return None
    alpha = analysis.plan.alpha
    rows = [(c.contrast.label, c.stratum_label, metric_name(c.metric), MeanStd.of(c.a), MeanStd.of(c.b),
             Delta(c.delta), Interval(*c.ci), f"{c.n_improved}/{c.n}", PValue(c.pvalue, alpha),
             f"{c.test.min_pvalue:.4g}") for c in comps]
    notes = ["p: exact two-sided paired sign-flip test over matched seeds, per contrast × stratum × metric; "
             "95% CI: percentile bootstrap of the mean paired difference; 'Improved': seeds where A is better.",
             EXPLORATORY, *_note_min_p(comps, alpha)]
    return Table("exploratory", "Exploratory: the declared contrasts on every exploratory metric",
                 ("Contrast (A vs B)", "Stratum", "Metric", "A", "B", "Δ (A−B)", "95% CI", "Improved",
                  "p (exploratory)", "min p"), tuple(rows), tuple(notes))


ERROR_STRUCTURE_FAMILY = "error_structure"


def error_structure_table(analysis: Analysis) -> Table | None:
    """Table XI in the study's shape and sign (Δ = circumplex − uniform): per metric Δ [CI] and p.

    From the declared ``error_structure`` family (p with its Holm p) when the plan has one, else
    from the exploratory circumplex-vs-uniform comparison (p labelled exploratory)."""
    alpha = analysis.plan.alpha
    family = analysis.family(ERROR_STRUCTURE_FAMILY)
    if family:
        metrics = list(dict.fromkeys(r.hypothesis.metric for r in family))
        keys = list(dict.fromkeys((r.hypothesis.contrast_label, r.stratum) for r in family))
        by = {(r.hypothesis.contrast_label, r.stratum, r.hypothesis.metric): r for r in family}
        rows = []
        for label, stratum in keys:
            cells = [by.get((label, stratum, m)) for m in metrics]
            row: list[Any] = [label, stratum_label(stratum) if stratum else "–",
                              max((c.n for c in cells if c is not None), default=0)]
            for c in cells:
                row.append(f"{c.delta:+.3f} {Interval(*c.ci).text('md')}" if c else None)
                row.append(f"{PValue(c.pvalue).text('csv')} ({PValue(c.adjusted_pvalue).text('csv')})" if c else None)
                row.append(c.decision if c else None)
            rows.append(tuple(row))
        columns = ["Contrast (A vs B)", "Stratum", "Seeds"]
        for m in metrics:
            columns += [f"{metric_name(m)} Δ [95% CI]", f"{metric_name(m)} p (Holm)", f"{metric_name(m)} decision"]
        rejected = sum(r.decision == "supported" for r in family)
        notes = [f"Declared family {ERROR_STRUCTURE_FAMILY}: Holm over its {len(family)} hypotheses; "
                 f"{rejected} of {len(family)} supported at α = {alpha:g}.",
                 "Δ: mean paired difference A − B as declared (the study's sign: circumplex − uniform; negative "
                 "error severity and positive quadrant keep favour the geometry), 95% percentile bootstrap CI.",
                 *_note_min_p([r for r in family], alpha)]
        return Table("error_structure", "Error structure, declared family (study Table XI)", tuple(columns),
                     tuple(rows), tuple(notes))
    r = analysis.error_structure
    if r is None:
        return None
    metrics = [m for m in ("expr_f1", "error_severity", "quadrant_keep") if any(c.metric == m for c in r.comparisons)]
    strata = list(dict.fromkeys(c.stratum for c in r.comparisons))
    rows = []
    for stratum in strata:
        cells = [r.get(m, stratum) for m in metrics]
        row = [r.contrast.label, stratum_label(stratum), max((c.n for c in cells if c is not None), default=0)]
        for c in cells:
            row.append(f"{c.delta:+.3f} {Interval(*c.ci).text('md')}" if c else None)
            row.append(PValue(c.pvalue, alpha) if c else None)
        rows.append(tuple(row))
    columns = ["Contrast (A vs B)", "Stratum", "Seeds"]
    for m in metrics:
        columns += [f"{metric_name(m)} Δ [95% CI]", f"{metric_name(m)} p (exploratory)"]
    notes = [f"Δ = {REFERENCE_COST} − {UNIFORM_COST} (the study's sign); the plan declares no "
             f"{ERROR_STRUCTURE_FAMILY} family, so these p-values are exploratory.", EXPLORATORY,
             *_note_min_p([c for c in r.comparisons if c.metric in metrics], alpha)]
    return Table("error_structure", "Error structure, exploratory (study Table XI)", tuple(columns), tuple(rows),
                 tuple(notes))


def isolation_table(analysis: Analysis) -> Table | None:
    """§6.3: Spearman ρ between class isolation and mean ΔF1, permutation p over class labels."""
    if not analysis.isolation:
        return None
    rows = []
    for r in analysis.isolation:
        most = r.class_names[int(max(range(len(r.isolation)), key=lambda k: r.isolation[k]))]
        least = r.class_names[int(min(range(len(r.isolation)), key=lambda k: r.isolation[k]))]
        rows.append((stratum_label(r.stratum), r.result.n, r.result.statistic,
                     PValue(r.result.pvalue, analysis.plan.alpha),
                     "exact" if r.result.exact else f"{r.result.n_permutations} random", f"{least} / {most}"))
    if analysis.isolation_combined is not None:
        c = analysis.isolation_combined
        rows.append(("combined", c.n, c.statistic, PValue(c.pvalue, analysis.plan.alpha),
                     "exact" if c.exact else f"{c.n_permutations} random", "–"))
    notes = ["iso_k = min_{j≠k} C_kj under the true circumplex; ΔF1_k = mean paired per-class F1 change "
             "(treatment − base). Per dataset: two-sided permutation p over class labels."]
    if analysis.isolation_combined is not None:
        side = {"two-sided": "two-sided", "greater": "one-sided in the predicted direction (ρ > 0)",
                "less": "one-sided (ρ < 0)"}[analysis.isolation_combined.alternative]
        notes.append(f"Combined: ranks within each dataset (their ΔF1 scales differ), labels permuted within each "
                     f"dataset; {side}, as the plan states (not pre-registered in the study).")
    notes.append(EXPLORATORY)
    return Table("isolation", "Class isolation vs ΔF1 (study §6.3)",
                 ("Stratum", "Classes", "Spearman ρ", "p", "Permutations", "least / most isolated"),
                 tuple(rows), tuple(notes))


def _includes(condition: Items, *parts: Items) -> bool:
    values = dict(condition)
    return all(k in values and values[k] == v for part in parts for k, v in part)


def rsa_table(analysis: Analysis) -> Table | None:
    """Table XII: mean representational alignment (rsa_rho) per condition and the paired test vs base."""
    has = [c for c in analysis.conditions if c.stats.get("rsa_rho") and c.stats["rsa_rho"].n]
    if not has:
        return None
    alpha = analysis.plan.alpha
    tests = [c for r in analysis.versus_baseline for c in r.comparisons if c.metric == "rsa_rho"]
    axes = list(analysis.varying_axes)
    rows = []
    for condition in has:
        test = next((t for t in tests if _includes(condition.condition, t.contrast.a, t.stratum)), None)
        rows.append((*[axis_text(dict(condition.condition).get(a)) for a in axes], condition.n,
                     MeanStd.of(condition.stats["rsa_rho"]), Delta(test.delta) if test else None,
                     PValue(test.pvalue, alpha) if test else None))
    base = f" (base: {stratum_label(analysis.baseline)})" if analysis.baseline else ""
    notes = ["rsa_rho: Spearman ρ between class-prototype cosine distances and the circumplex cost (§6.1); "
             f"Δ and p: paired sign-flip test against the base over matched seeds{base}.", EXPLORATORY,
             *_note_min_p(tests, alpha)]
    return Table("rsa", "Representational alignment with the circumplex (study Table XII)",
                 (*axes, "Seeds", "RSA ρ", "Δ vs base", "p vs base"), tuple(rows), tuple(notes))


def design_table(analysis: Analysis) -> Table | None:
    """Per declared hypothesis: paired seeds, zero differences, the smallest attainable p of the exact
    test on the actual differences, and whether it can reach its threshold (α, or α/m in a family)."""
    if not analysis.hypotheses:
        return None
    rows = []
    for r in analysis.hypotheses:
        d, h = r.design, r.hypothesis
        rows.append((h.role, h.label, d.n_paired, d.n_zero, f"{d.min_pvalue:.4g}" if math.isfinite(d.min_pvalue)
                     else None, f"{d.threshold:.4g}" + ("" if h.family is None else f" (α/{d.family_size})"),
                     "yes" if d.can_reach else "NO — this design cannot decide H",
                     len(r.pairing.unmatched), len(r.pairing.integrity)))
    return Table("design", "Design check: what each declared hypothesis can reach",
                 ("Role", "Hypothesis", "Paired seeds", "Zero differences", "min attainable p", "Threshold",
                  "Can reach", "Unmatched trials", "Integrity violations"), tuple(rows),
                 ("Exact sign-flip test: min p = 2^(z+1) / 2^n two-sided with z zero differences among n "
                  "(half that one-sided); n = 6 without zeros gives 0.03125, one zero 0.0625. A family member "
                  "must reach α/m at Holm's first step.",))


def pairing_issues_table(analysis: Analysis) -> Table | None:
    """Every trial left out of a contrast (unmatched, duplicated, failed) and every integrity violation."""
    rows, seen = [], set()
    for r in analysis.all_contrasts:
        p = r.pairing
        for u in p.unmatched:
            key = (p.contrast.label, u.trial_id, u.reason)
            if key not in seen:
                seen.add(key)
                rows.append((p.contrast.label, "unmatched", u.trial_id, u.side, u.condition, u.seed, u.reason))
        for v in p.integrity:
            key = (p.contrast.label, v.trial_a, v.trial_b)
            if key not in seen:
                seen.add(key)
                rows.append((p.contrast.label, "integrity", f"{v.trial_a} / {v.trial_b}", "A / B",
                             stratum_label(v.stratum), v.seed,
                             f"data_order_hash differs ({v.hash_a} ≠ {v.hash_b}); excluded from the tests"))
    if not rows:
        return None
    return Table("pairing_issues", "Pairing issues: trials excluded from the tests",
                 ("Contrast (A vs B)", "Issue", "Trial", "Side", "Condition / stratum", "Seed", "Reason"),
                 tuple(rows), ("Nothing is dropped silently: every excluded trial is listed here.",))


def all_tables(analysis: Analysis) -> list[Table]:
    """Every table the sweep supports, in report order."""
    candidates: list[Table | None] = [
        hypotheses_table(analysis),
        design_table(analysis),
        method_table(analysis),
        cost_control_table(analysis),
        cross_dataset_table(analysis),
        *per_class_table(analysis),
        *per_au_table(analysis),
        error_structure_table(analysis),
        isolation_table(analysis),
        rsa_table(analysis),
        exploratory_table(analysis),
        pairing_issues_table(analysis),
    ]
    return [t for t in candidates if t is not None]
