"""A cost is a source and a control (docs/methods.md §13; docs/methods.md §5).

``method.cost`` is ``{source: SOURCE, control: none | permuted | uniform}`` (``CostSpec``):

- **source** — where the (K, K) ground cost comes from:

  - a built-in, estimated on the trial's training split (``trainers.geometry``): ``circumplex``,
    ``instance``, ``gaussian_w2``, ``va_au``, ``imported`` (docs/methods.md §5);
  - ``file:PATH`` — a matrix with its class names (formats: ``load_cost_table``); relative paths
    mean what they mean in the directory affsweep was started from, ``$VARS`` are expanded;
  - the name of a function registered with ``@register_cost("name")``, or ``"module:name"`` to
    import ``module`` first (it registers ``name`` on import; it must be importable by the workers).

- **control** — ``none`` (the source itself), ``permuted`` (``C[pi][:, pi]`` with ``pi`` the trial
  seed's derangement, ``trainers.geometry.derangement``: the same costs on the wrong pairs) or
  ``uniform`` (every off-diagonal entry = the source's off-diagonal mean: a pure confidence penalty).

Today's names are shorthands and stay the canonical form of what they mean, so existing trial_ids
do not change: ``permuted`` = ``{source: circumplex, control: permuted}``, ``uniform`` =
``{source: circumplex, control: uniform}``, ``circumplex`` / ``instance`` / ``gaussian_w2`` /
``va_au`` / ``imported`` = that source with ``control: none``, ``none`` = no cost. Any source with
``control: none`` is stored as its bare string (``file:costs/x.json``); other combinations are
stored as the mapping.

Error structure is scored under the dataset's true circumplex (docs/methods.md §6) and, for a source other
than the circumplex, also under the source's own matrix (``source_error_metrics``:
``error_severity@source``, ``affect_weighted_acc@source``, and ``quadrant_keep@source`` where the
source places classes in valence-arousal).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = [
    "BUILTIN_SOURCES",
    "CONTROLS",
    "COST_FUNCTIONS",
    "COST_VARIANTS",
    "CostSpec",
    "CostTable",
    "apply_control",
    "build_cost",
    "canonical_cost",
    "check_cost_for_label_space",
    "cost_identity",
    "cost_key",
    "cost_label",
    "cost_pair",
    "load_cost_table",
    "parse_cost",
    "register_cost",
    "source_error_metrics",
    "stored_cost",
    "validate_cost_matrix",
]

# today's names of method.cost: the shorthands (config and geometry re-export this tuple)
COST_VARIANTS = ("none", "circumplex", "permuted", "uniform", "instance", "gaussian_w2", "va_au", "imported")
BUILTIN_SOURCES = ("circumplex", "instance", "gaussian_w2", "va_au", "imported")
CONTROLS = ("none", "permuted", "uniform")
SHORTHANDS: dict[str, tuple[str, str]] = {
    **{s: (s, "none") for s in BUILTIN_SOURCES},
    "permuted": ("circumplex", "permuted"),
    "uniform": ("circumplex", "uniform"),
}
FILE_PREFIX = "file:"
COST_FILE_SUFFIXES = (".json", ".csv", ".npy", ".npz")

# a cost function: (label_space, train_index, geometry) -> (K, K) array in label order, or a CostTable
CostFunction = Callable[..., Any]
COST_FUNCTIONS: dict[str, CostFunction] = {}


def register_cost(name: str):
    """Decorator: make a cost function reachable as ``method.cost: {source: name}``.

    The function is called as ``fn(label_space=..., train_index=..., geometry=...)`` — the trial's
    ``trainers.data.labels.LabelSpace`` (``.class_names``), its training index DataFrame (labels
    after label noise) and its ``trainers.geometry.Geometry`` (None without VA) — and returns a
    (K, K) array in ``label_space.class_names`` order, or a ``CostTable`` (reordered by name).
    """
    if name in COST_VARIANTS or name == "none" or ":" in name or not name:
        raise ValueError(f"cannot register a cost named {name!r}: built-in names and ':' are reserved")

    def wrap(fn: CostFunction) -> CostFunction:
        if name in COST_FUNCTIONS and COST_FUNCTIONS[name] is not fn:
            raise ValueError(f"cost {name!r} registered twice")
        COST_FUNCTIONS[name] = fn
        return fn

    return wrap


# --- the config value -------------------------------------------------------------------------------

class CostSpec(BaseModel):
    """``method.cost`` as a source and a control (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    control: Literal["none", "permuted", "uniform"] = "none"

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        source = source.strip()
        if source in BUILTIN_SOURCES:
            return source
        if source.startswith(FILE_PREFIX):
            load_cost_table(source[len(FILE_PREFIX):])  # file-level checks now; class names per trial
            return source
        cost_function(source)
        return source

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if isinstance(data, dict):
            extra = [k for k in data if k not in ("source", "control")]
            if extra:
                raise ValueError(_unknown(extra[0], ["source", "control"], what="key"))
            if "source" not in data:
                raise ValueError("a cost mapping needs a source, e.g. {source: circumplex, control: permuted}")
        return data

    @property
    def shorthand(self) -> str | None:
        """Today's name for this (source, control), if it has one."""
        return next((name for name, pair in SHORTHANDS.items() if pair == (self.source, self.control)), None)

    @property
    def label(self) -> str:
        """``permuted`` / ``file:x.json`` / ``uniform(file:x.json)``: short and unique."""
        if self.shorthand:
            return self.shorthand
        return self.source if self.control == "none" else f"{self.control}({self.source})"


def _unknown(value: Any, choices: Sequence[str], what: str = "value") -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else f" (choose from {', '.join(choices)})"
    return f"unknown {what} {value!r}{hint}"


def parse_cost(value: str | dict | CostSpec | None, what: str = "value") -> CostSpec | None:
    """The (source, control) of a ``method.cost`` value; None for ``none`` (no cost term)."""
    if value is None or value == "none":
        return None
    if isinstance(value, CostSpec):
        return value
    if isinstance(value, str):
        if value in SHORTHANDS:
            return CostSpec(source=SHORTHANDS[value][0], control=SHORTHANDS[value][1])
        if not value.startswith(FILE_PREFIX) and ":" not in value and value not in COST_FUNCTIONS:
            # a typo of a built-in name reads as one (the message sweeps have always shown)
            raise ValueError(_unknown(value, [*COST_VARIANTS, "file:PATH", *sorted(COST_FUNCTIONS)], what))
        return CostSpec(source=value)
    if isinstance(value, dict):
        return CostSpec.model_validate(value)
    raise ValueError(f"must be a name or {{source: ..., control: ...}}, got {value!r}")


def canonical_cost(value: str | dict | CostSpec | None) -> str | CostSpec | None:
    """The stored form of a ``method.cost`` value: a shorthand or bare source string where one says
    the same (so trial_ids of today's sweeps are unchanged), else the ``CostSpec``."""
    if value is None:
        return None
    spec = parse_cost(value)
    if spec is None:
        return "none"
    if spec.shorthand:
        return spec.shorthand
    return spec.source if spec.control == "none" else spec


def cost_label(value: str | dict | CostSpec | None) -> str:
    spec = parse_cost(value)
    return "none" if spec is None else spec.label


# --- the names of a cost, without checking its source (analysis and the sweep's controls use these) ---

# sources whose error structure the true circumplex already scores (no ``@source`` metrics)
TRUE_CIRCUMPLEX_SOURCES = ("circumplex", "instance")


def cost_pair(value: Any) -> tuple[str, str] | None:
    """``(source, control)`` of a ``method.cost`` value in any spelling — a shorthand, a bare source,
    a ``{source, control}`` mapping, its JSON string (results.parquet) or its label
    (``uniform(file:x.json)``) — WITHOUT checking that the source exists (no file is read, no module
    imported): what analysis needs to match selectors against results. None for ``none``."""
    if isinstance(value, CostSpec):
        return value.source, value.control
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return text, "none"
        else:
            if text in ("", "none", "null", "None"):
                return None
            if text in SHORTHANDS:
                return SHORTHANDS[text]
            head, paren, rest = text.partition("(")
            if paren and head in CONTROLS and rest.endswith(")"):
                return rest[:-1], head
            return text, "none"
    if value is None:
        return None
    if isinstance(value, dict):
        source, control = value.get("source"), value.get("control") or "none"
        if source is None or str(source) == "none":
            return None
        return str(source).strip(), str(control)
    raise ValueError(f"not a cost value: {value!r}")


def cost_key(value: Any) -> str:
    """One name per (source, control), unchecked: ``none``, a shorthand (``uniform``), a bare source
    (``file:x.json``) or ``control(source)`` — ``CostSpec.label``'s form."""
    pair = cost_pair(value)
    if pair is None:
        return "none"
    shorthand = next((name for name, p in SHORTHANDS.items() if p == pair), None)
    return shorthand or (pair[0] if pair[1] == "none" else f"{pair[1]}({pair[0]})")


def stored_cost(source: str, control: str = "none") -> str | dict[str, str]:
    """The form ``canonical_cost`` stores (and the grid writes) for a (source, control), unchecked:
    a shorthand or bare source string where one says the same, else the mapping."""
    shorthand = next((name for name, p in SHORTHANDS.items() if p == (source, control)), None)
    if shorthand:
        return shorthand
    return source if control == "none" else {"source": source, "control": control}


def cost_identity(value: str | CostSpec | None) -> dict[str, Any]:
    """Extra trial_id fields of a cost: the sha256 of a cost file's content (a path alone does not
    define the experiment). Empty for every other source, so today's trial_ids are unchanged."""
    spec = parse_cost(value)
    if spec is None or not spec.source.startswith(FILE_PREFIX):
        return {}
    return {"cost_sha256": load_cost_table(spec.source[len(FILE_PREFIX):]).sha256}


def check_cost_for_label_space(value: str | CostSpec | None, label_space) -> None:
    """Config-time check of what the label space decides: a cost file's class names (by name)."""
    spec = parse_cost(value)
    if spec is not None and spec.source.startswith(FILE_PREFIX):
        path = spec.source[len(FILE_PREFIX):]
        load_cost_table(path).in_order(label_space.class_names, where=f"cost file {path}")


def cost_function(source: str) -> CostFunction:
    """The registered function of a source name (``name`` or ``module:name``)."""
    module, _, name = source.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"cost source {source!r}: cannot import module {module!r} ({e})") from None
    if name not in COST_FUNCTIONS:
        where = f" after importing {module!r}" if module else ""
        raise ValueError(f"unknown cost source {source!r}{where}: not built in ({', '.join(BUILTIN_SOURCES)}), "
                         f"not file:PATH, not registered with @register_cost "
                         f"(registered: {', '.join(sorted(COST_FUNCTIONS)) or 'none'})")
    return COST_FUNCTIONS[name]


# --- cost tables (files and functions) --------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CostTable:
    """A (K, K) cost with its class names, and optionally (K, 2) valence-arousal centroids."""

    classes: tuple[str, ...]
    cost: np.ndarray
    centroids: np.ndarray | None = None
    sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def in_order(self, class_names: Sequence[str], where: str = "cost") -> CostTable:
        """This table with rows and columns reordered to ``class_names``, matched by name
        (case-insensitive, with the aliases of ``trainers.geometry.CLASS_ALIASES``)."""
        from trainers.geometry import canonical_class_name

        mine = [canonical_class_name(c) for c in self.classes]
        target = [canonical_class_name(c) for c in class_names]
        twice = [c for c, m in zip(self.classes, mine) if mine.count(m) > 1]
        if twice:
            raise ValueError(f"{where}: classes {' and '.join(map(repr, twice[:2]))} name the same class")
        unknown = [c for c, m in zip(self.classes, mine) if m not in target]
        if unknown:
            raise ValueError(f"{where}: class {unknown[0]!r} is not in the label space "
                             f"({', '.join(class_names)})")
        missing = [c for c, t in zip(class_names, target) if t not in mine]
        if missing:
            raise ValueError(f"{where}: class {missing[0]!r} of the label space is missing")
        order = [mine.index(t) for t in target]
        cents = None if self.centroids is None else self.centroids[order]
        return CostTable(tuple(class_names), self.cost[np.ix_(order, order)], cents, self.sha256, self.meta)


def validate_cost_matrix(cost: Any, classes: Sequence[str] | None, where: str) -> np.ndarray:
    """A float (K, K) array that is square, finite, non-negative, with a zero diagonal and some
    positive off-diagonal entry; ValueError naming ``where`` and the first problem otherwise."""
    try:
        c = np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the cost is not a numeric matrix (rows of equal length)") from None
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"{where}: the cost is not square (shape {'x'.join(map(str, c.shape))})")
    if classes is not None and len(classes) != len(c):
        raise ValueError(f"{where}: {len(classes)} class names for a {len(c)}x{len(c)} cost")
    if classes is not None and len(set(classes)) != len(classes):
        dup = next(n for n in classes if list(classes).count(n) > 1)
        raise ValueError(f"{where}: class {dup!r} is named twice")
    if len(c) < 2:
        raise ValueError(f"{where}: a cost needs at least 2 classes")
    if not np.isfinite(c).all():
        i, j = map(int, np.argwhere(~np.isfinite(c))[0])
        raise ValueError(f"{where}: entry [{_name(classes, i)}, {_name(classes, j)}] is not finite ({c[i, j]})")
    if (c < 0).any():
        i, j = map(int, np.argwhere(c < 0)[0])
        raise ValueError(f"{where}: entry [{_name(classes, i)}, {_name(classes, j)}] is negative ({c[i, j]:g})")
    diag = np.flatnonzero(np.abs(np.diag(c)) > 1e-12)
    if diag.size:
        k = int(diag[0])
        raise ValueError(f"{where}: the diagonal must be zero, but entry [{_name(classes, k)}, "
                         f"{_name(classes, k)}] is {c[k, k]:g}")
    if not (c[~np.eye(len(c), dtype=bool)] > 0).any():
        raise ValueError(f"{where}: every off-diagonal entry is zero (no cost at all)")
    c = c.copy()
    np.fill_diagonal(c, 0.0)
    return c


def _name(classes, i: int) -> str:
    return repr(classes[i]) if classes is not None else str(i)


def load_cost_table(path: str | os.PathLike) -> CostTable:
    """Read and check a cost file (cached by path, size and mtime). Formats, by suffix:

    - ``.json``: ``{"classes": [K names], "cost": [[K x K]], "centroids": [[v, a], ...]?}``
      (``centroids`` optional; other keys, e.g. ``"about"``, are documentation and ignored);
    - ``.csv``: a header row ``class,<name 1>,...,<name K>`` and K rows ``<name i>,<C_i1>,...``;
      rows and columns are each matched by name (they may come in different orders);
    - ``.npz``: arrays ``classes`` (K strings) and ``cost`` (K x K), optionally ``centroids``;
    - ``.npy``: the K x K matrix, with its class names one per line in a sidecar file next to it,
      ``<stem>.classes.txt``.

    Entry ``[i, j]`` is ``C_ij``. The OT term reads ``C[k, y]`` (mass on k, truth y), the error
    metrics ``C[true, predicted]``; for a symmetric cost, as every shipped one is, the same.
    """
    p = Path(os.path.expandvars(str(path))).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise ValueError(f"cost file {path}: cannot read ({e.strerror})") from None
    return _load_cached(str(p.resolve()), str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load_cached(resolved: str, shown: str, size: int, mtime_ns: int) -> CostTable:
    p = Path(resolved)
    where = f"cost file {shown}"
    suffix = p.suffix.lower()
    if suffix not in COST_FILE_SUFFIXES:
        raise ValueError(f"{where}: unknown format {suffix or '(no suffix)'!r} "
                         f"(use {', '.join(COST_FILE_SUFFIXES)})")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ValueError(f"{where}: cannot read ({e.strerror})") from None
    digest = hashlib.sha256(raw).hexdigest()
    centroids = None
    try:
        if suffix == ".json":
            classes, cost, centroids = _parse_json(raw, where)
        elif suffix == ".csv":
            classes, cost = _parse_csv(p, where)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for key in ("classes", "cost"):
                    if key not in z.files:
                        raise ValueError(f"{where}: no array {key!r} (has {', '.join(z.files) or 'none'})")
                classes = [str(c) for c in z["classes"].tolist()]
                cost = z["cost"]
                centroids = z["centroids"] if "centroids" in z.files else None
        else:  # .npy + sidecar
            cost = np.load(p, allow_pickle=False)
            side = p.with_name(p.stem + ".classes.txt")
            try:
                classes = [line.strip() for line in side.read_text().splitlines() if line.strip()]
            except OSError:
                raise ValueError(f"{where}: no class names: expected {side.name} next to it "
                                 "(one class name per line)") from None
            digest = hashlib.sha256(raw + b"\0" + "\n".join(classes).encode()).hexdigest()
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}") from None
    classes = tuple(str(c).strip() for c in classes)
    cost = validate_cost_matrix(cost, classes, where)
    if centroids is not None:
        centroids = np.asarray(centroids, dtype=np.float64)
        if centroids.shape != (len(classes), 2) or not np.isfinite(centroids).all():
            raise ValueError(f"{where}: centroids must be {len(classes)} finite (valence, arousal) pairs")
    return CostTable(classes, cost, centroids, digest, {"file": shown, "sha256": digest})


def _parse_json(raw: bytes, where: str):
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "classes" not in data or "cost" not in data:
        raise ValueError(f'{where}: expected {{"classes": [...], "cost": [[...]]}}')
    if not isinstance(data["classes"], list) or not all(isinstance(c, str) for c in data["classes"]):
        raise ValueError(f"{where}: classes must be a list of class names")
    cost = data["cost"]
    if not isinstance(cost, list) or not all(isinstance(r, list) for r in cost):
        raise ValueError(f"{where}: cost must be a list of rows")
    widths = {len(r) for r in cost}
    if len(widths) > 1:
        raise ValueError(f"{where}: the cost is not square (rows of {', '.join(map(str, sorted(widths)))} entries)")
    try:
        arr = np.array([[np.nan if v is None else float(v) for v in r] for r in cost], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the cost has a non-numeric entry") from None
    if arr.size and arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{where}: the cost is not square ({arr.shape[0]} rows of {arr.shape[1]})")
    return data["classes"], arr, data.get("centroids")


def _parse_csv(p: Path, where: str):
    import pandas as pd

    try:
        df = pd.read_csv(p, index_col=0, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not a readable CSV ({str(e).splitlines()[0]})") from None
    rows = [str(r).strip() for r in df.index]
    cols = [str(c).strip() for c in df.columns]
    if len(rows) != len(cols):
        raise ValueError(f"{where}: the cost is not square ({len(rows)} rows, {len(cols)} columns)")
    if len(set(cols)) != len(cols):
        raise ValueError(f"{where}: a column name is repeated")
    if set(rows) != set(cols):
        odd = next(iter(sorted(set(rows) ^ set(cols))))
        raise ValueError(f"{where}: row and column class names differ ({odd!r})")
    try:
        values = df.apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the cost has a non-numeric entry") from None
    order = [rows.index(c) for c in cols]  # rows in the order of the columns
    return cols, values[order]


# --- a trial's cost: source, then control -----------------------------------------------------------

def apply_control(matrix: np.ndarray, control: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the matrix trained with, the derangement or None) for a source matrix and a control."""
    from trainers.geometry import derangement, uniform_cost

    c = np.asarray(matrix, dtype=np.float64)
    if control == "none":
        return c, None
    if control == "permuted":
        perm = derangement(len(c), seed)
        return c[np.ix_(perm, perm)], perm
    if control == "uniform":
        return uniform_cost(c), None
    raise ValueError(_unknown(control, CONTROLS))


def build_cost(value, geometry, seed: int, imported: np.ndarray | None = None, *, label_space=None,
               train_index=None):
    """The ``trainers.geometry.CostChoice`` of a trial: the source's matrix, then its control.

    ``geometry``: the training split's circumplex (None without VA); ``seed``: the TRIAL seed (the
    derangement); ``imported``: a (K, K) cost in this label order for the ``imported`` source and as
    the circumplex of a dataset without VA; ``label_space`` / ``train_index``: what a file (by class
    name) and a registered function need.
    """
    from trainers.geometry import CostChoice, builtin_source_cost

    spec = parse_cost(value, what="cost variant")
    if spec is None:
        return CostChoice("none", None)
    source, control = spec.source, spec.control
    meta: dict[str, Any] = {}
    if source in BUILTIN_SOURCES:
        matrix, circumplex, centroids = builtin_source_cost(source, geometry, imported)
    else:
        if label_space is None:
            raise ValueError(f"cost source {source!r} needs the trial's label space")
        if source.startswith(FILE_PREFIX):
            path = source[len(FILE_PREFIX):]
            table = load_cost_table(path).in_order(label_space.class_names, where=f"cost file {path}")
        else:
            fn = cost_function(source)
            out = fn(label_space=label_space, train_index=train_index, geometry=geometry)
            where = f"cost function {source!r}"
            if isinstance(out, CostTable):
                table = out.in_order(label_space.class_names, where=where)
                table = CostTable(table.classes, validate_cost_matrix(table.cost, table.classes, where),
                                  table.centroids, meta=table.meta)
            else:
                table = CostTable(tuple(label_space.class_names),
                                  validate_cost_matrix(out, label_space.class_names, where))
            table.meta.setdefault("function", f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}")
        matrix, centroids, meta = table.cost, table.centroids, dict(table.meta)
        circumplex = None
        if geometry is not None:
            from trainers.geometry import _fill_undefined

            circumplex = _fill_undefined(geometry.cost)
        elif imported is not None:
            circumplex = np.asarray(imported, dtype=np.float64)
    used, perm = apply_control(matrix, control, seed)
    # instance rows: per-frame distances to the (permuted) centroids; the uniform control has none
    per_frame = source == "instance" and control != "uniform"
    inst_centroids = None
    if per_frame and centroids is not None:
        inst_centroids = centroids if perm is None else np.asarray(centroids)[perm]
    return CostChoice(spec.label, used, derangement=perm, circumplex=circumplex,
                      centroids=inst_centroids if source == "instance" else None,
                      cost_source=source, control=control, source_cost=matrix,
                      source_centroids=centroids, source_meta=meta, per_frame=per_frame)


# --- error structure under the source's own geometry ------------------------------------------------

def source_error_metrics(confusion: np.ndarray, choice) -> dict[str, float]:
    """``error_severity@source``, ``affect_weighted_acc@source`` (and ``quadrant_keep@source`` where
    the source has centroids) of a validation confusion matrix under the trial's cost SOURCE — the
    unperturbed source even for its permuted/uniform controls, so the three are scored alike.

    Empty for no cost and for the circumplex itself (``circumplex``, ``instance``: the true cost
    already scores them). Classes without a centroid in a centroid-bearing source are left out, as in
    the true-circumplex metrics."""
    from analysis.errors import affect_weighted_accuracy, error_severity, quadrant_preservation

    if choice is None or choice.source_cost is None or choice.cost_source in TRUE_CIRCUMPLEX_SOURCES:
        return {}
    cost = np.asarray(choice.source_cost, dtype=np.float64)
    m = np.asarray(confusion, dtype=np.float64)
    if m.sum() == 0:
        return {"error_severity@source": float("nan"), "affect_weighted_acc@source": float("nan")}
    cents = choice.source_centroids
    known = np.arange(len(cost)) if cents is None else np.flatnonzero(np.isfinite(cents).all(1))
    sub = np.ix_(known, known)
    out = {"error_severity@source": error_severity(m[sub], cost[sub]),
           "affect_weighted_acc@source": affect_weighted_accuracy(m[sub], cost[sub])}
    if cents is not None:
        out["quadrant_keep@source"] = quadrant_preservation(m[sub], np.asarray(cents)[known])
    return out


# --- a registered example: copy this to write your own ---------------------------------------------

@register_cost("au_signature")
def au_signature(label_space, train_index, geometry):
    """Distance between the classes' mean action-unit vectors on the training split (no VA used):
    ``C_ij = ||s_i - s_j||``, ``s_k`` = mean of each AU over frames labelled k (NaN units skipped).

    An example of ``@register_cost``: everything the trial knows comes in as arguments, a (K, K)
    array in ``label_space.class_names`` order goes out. Use as ``method.cost: {source:
    au_signature, control: uniform}``. A class (or unit) without AU labels gets the mean distance.
    """
    from trainers.data.labels import AU_NAMES
    from trainers.geometry import _fill_undefined, au_signatures, cost_matrix

    if not label_space.has_au or not all(a in train_index.columns for a in AU_NAMES):
        raise ValueError(f"cost source 'au_signature' needs AU labels; {label_space.name} has none")
    sigs = au_signatures(train_index[list(AU_NAMES)].to_numpy(np.float64), train_index["expr"].to_numpy(),
                         label_space.num_classes)
    sigs = np.where(np.isfinite(sigs), sigs, np.nanmean(sigs, axis=0, keepdims=True))
    return _fill_undefined(cost_matrix(sigs))
