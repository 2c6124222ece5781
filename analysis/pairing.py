"""Matched-seed pairing of two conditions (docs/methods.md §7).

For a contrast A vs B, a trial of A is paired with the trial of B that agrees with it on every axis
except the contrasted one(s) and shares its seed. Whatever cannot be paired is reported, never
dropped silently: trials without a partner, duplicated grid points, failed trials, and pairs whose
``data_order_hash`` disagree are listed in the :class:`Pairing` and left out of every test.

``data_order_hash`` is what one seed must hold fixed across conditions (docs/methods.md §7): the world
(dataset, its train/validation split, n, the labels as distributed) and the seed's random streams
(initialisation, data order, augmentation) — ``trainers.data.pipeline.matched_seed_hash``. What a
condition changes by design (its own sampler, e.g. natural sampling; injected label noise) does not
enter it, so such pairs stay matched; another world, n or split is a violation. The realized
first-epoch order is recorded separately (``sample_order_hash``) and not checked here.

Axes that are constant within A and within B but differ between them (e.g. ``method.name`` when
the selectors name only ``method.cost``) are implied by the contrast and contrasted as well; the
remaining axes define *strata* (e.g. one per dataset), each tested on its own.
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.plan import MAPPING_VALUED_AXES, selector_label

__all__ = [
    "Contrast",
    "IntegrityViolation",
    "MatchedPair",
    "Pairing",
    "UnmatchedTrial",
    "canonical_value",
    "freeze_selector",
    "normalise_value",
    "pair_trials",
    "select",
    "sort_key",
    "stratum_label",
]

Items = tuple[tuple[str, Any], ...]


def normalise_value(value: Any) -> Any:
    """Hashable, comparable form of a cell: NaN/None -> None, numpy scalars -> Python, 1.0 -> 1."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    if isinstance(value, list | tuple):
        return tuple(normalise_value(v) for v in value)
    return value


def canonical_value(key: str, value: Any) -> Any:
    """The one form selectors and result cells of axis ``key`` are compared in: a cost
    (``method.cost``: a shorthand, ``{source, control}``, its JSON string or its label) is its
    ``trainers.costs.cost_key`` (``uniform``, ``permuted(file:x.json)``); other values are
    ``normalise_value``'s."""
    if key in MAPPING_VALUED_AXES and value is not None and not (isinstance(value, float) and math.isnan(value)):
        from trainers.costs import cost_key  # numpy + pydantic only; no file is read

        try:
            return cost_key(value)
        except ValueError:
            return normalise_value(value)
    return normalise_value(value)


def freeze_selector(selector: Mapping[str, Any]) -> Items:
    """A selector as a hashable tuple of ``(key, canonical value)`` items."""
    return tuple((str(k), canonical_value(str(k), v)) for k, v in selector.items())


def stratum_label(stratum: Items) -> str:
    return ", ".join(f"{k}={v}" for k, v in stratum) or "all"


@dataclass(frozen=True)
class Contrast:
    """A vs B: each side a selector of axis values; the effect is ``A - B`` over matched seeds."""

    a: Items
    b: Items
    role: str = "secondary"  # "primary" | "secondary" | "descriptive"

    @classmethod
    def of(cls, a: Mapping[str, Any], b: Mapping[str, Any], role: str = "secondary") -> Contrast:
        return cls(freeze_selector(a), freeze_selector(b), role)

    @property
    def a_label(self) -> str:
        return selector_label(dict(self.a))

    @property
    def b_label(self) -> str:
        return selector_label(dict(self.b))

    @property
    def label(self) -> str:
        return f"{self.a_label} vs {self.b_label}"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([k for k, _ in self.a] + [k for k, _ in self.b]))


@dataclass(frozen=True)
class MatchedPair:
    stratum: Items
    seed: Any
    trial_a: str
    trial_b: str
    row_a: int  # positional row in the results frame
    row_b: int


@dataclass(frozen=True)
class UnmatchedTrial:
    trial_id: str
    side: str  # "A" or "B"
    condition: str
    seed: Any
    reason: str


@dataclass(frozen=True)
class IntegrityViolation:
    """A would-be pair whose ``data_order_hash`` differ: same seed, but another world (dataset,
    split, n) or other random streams."""

    stratum: Items
    seed: Any
    trial_a: str
    trial_b: str
    hash_a: str
    hash_b: str


@dataclass(frozen=True)
class Pairing:
    contrast: Contrast
    contrasted_axes: tuple[str, ...]
    strata_axes: tuple[str, ...]
    pairs: tuple[MatchedPair, ...]
    unmatched: tuple[UnmatchedTrial, ...]
    integrity: tuple[IntegrityViolation, ...]
    n_unchecked: int  # pairs whose data_order_hash is missing on either side
    notes: tuple[str, ...] = ()

    def by_stratum(self) -> dict[Items, tuple[MatchedPair, ...]]:
        groups: dict[Items, list[MatchedPair]] = defaultdict(list)
        for pair in self.pairs:
            groups[pair.stratum].append(pair)
        return {k: tuple(v) for k, v in groups.items()}

    @property
    def clean(self) -> bool:
        return not (self.unmatched or self.integrity)


def _column_mask(column: pd.Series, value: Any, key: str = "") -> np.ndarray:
    if isinstance(value, list | tuple):  # any of several values
        mask = np.zeros(len(column), dtype=bool)
        for v in value:
            mask |= _column_mask(column, v, key)
        return mask
    if key in MAPPING_VALUED_AXES:
        want = canonical_value(key, value)
        return column.map(lambda c: canonical_value(key, c) == want).to_numpy()
    value = normalise_value(value)
    if value is None:
        return column.isna().to_numpy()
    if isinstance(value, bool):
        return column.map(lambda c: normalise_value(c) in (value, str(value), str(value).lower())).to_numpy()
    if isinstance(value, int | float):
        numeric = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return np.isclose(numeric, float(value), rtol=1e-9, atol=1e-12) & np.isfinite(numeric)
    return column.map(lambda c: normalise_value(c) is not None and str(c) == str(value)).to_numpy()


def select(frame: pd.DataFrame, selector: Mapping[str, Any] | Items) -> np.ndarray:
    """Boolean mask of the rows matching every ``key: value`` of a selector.

    Numbers compare numerically (``1`` matches ``1.0``), ``None`` matches missing values, a list
    matches any of its values; unknown keys raise with the closest column names.
    """
    items = selector.items() if isinstance(selector, Mapping) else selector
    mask = np.ones(len(frame), dtype=bool)
    for key, value in items:
        if key not in frame.columns:
            close = difflib.get_close_matches(key, [str(c) for c in frame.columns], n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise KeyError(f"selector key {key!r} is not a column of the results{hint}")
        mask &= _column_mask(frame[key], value, key)
    return mask


def _column_values(frame: pd.DataFrame, column: str) -> list:
    """A column as a list of normalised Python values (row access without pandas overhead)."""
    return [normalise_value(v) for v in frame[column].tolist()]


def _hash_values(frame: pd.DataFrame) -> list[str | None]:
    if "data_order_hash" not in frame.columns:
        return [None] * len(frame)
    return [None if v is None or str(v) == "" else str(v) for v in _column_values(frame, "data_order_hash")]


def sort_key(value: Any) -> tuple:
    """Orders axis values: numbers numerically (0 < 0.5 < 1), then strings, then missing values."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def pair_trials(frame: pd.DataFrame, contrast: Contrast, axes: Iterable[str]) -> Pairing:
    """Pair the trials of ``contrast.a`` with those of ``contrast.b`` by stratum and seed.

    Parameters
    ----------
    frame : results frame (one row per trial; ``trial_id``, ``seed``, ``status``, axis columns).
    contrast : the two selectors.
    axes : the sweep's grid axes (``seed`` excluded).
    """
    axes = [a for a in axes if a != "seed"]
    mask_a, mask_b = select(frame, contrast.a), select(frame, contrast.b)
    overlap = np.flatnonzero(mask_a & mask_b)
    if overlap.size:
        raise ValueError(
            f"contrast {contrast.label}: {overlap.size} trial(s) match both sides "
            f"(e.g. {frame['trial_id'].iloc[int(overlap[0])]}); the selectors must pick disjoint conditions"
        )
    notes: list[str] = []
    unmatched: list[UnmatchedTrial] = []
    status = [str(v) for v in frame["status"].tolist()] if "status" in frame.columns else ["done"] * len(frame)
    done = np.array([v == "done" for v in status], dtype=bool)
    ids = [str(v) for v in frame["trial_id"].tolist()]
    seeds = _column_values(frame, "seed")
    values = {a: _column_values(frame, a) for a in axes}
    hashes = _hash_values(frame)

    def condition(r: int) -> str:
        return ", ".join(f"{a}={values[a][r]}" for a in axes) or "(all)"

    sides = {}
    for side, mask in (("A", mask_a), ("B", mask_b)):
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            notes.append(f"no trial matches {side} ({contrast.a_label if side == 'A' else contrast.b_label})")
        for r in rows[~done[rows]]:
            unmatched.append(UnmatchedTrial(ids[r], side, condition(r), seeds[r], f"status={status[r]}"))
        sides[side] = rows[done[rows]]

    # axes constant within each side but different between them are part of the contrast
    implied = []
    for axis in axes:
        if axis in contrast.keys:
            continue
        values_a = {values[axis][r] for r in sides["A"]}
        values_b = {values[axis][r] for r in sides["B"]}
        if len(values_a) == 1 and len(values_b) == 1 and values_a != values_b:
            implied.append(axis)
    if implied:
        notes.append(f"axes implied by the contrast (constant on each side): {', '.join(implied)}")
    contrasted = tuple(dict.fromkeys([*contrast.keys, *implied]))
    strata_axes = tuple(a for a in axes if a not in contrasted)

    groups: dict[str, dict[tuple, list[int]]] = {"A": defaultdict(list), "B": defaultdict(list)}
    for side, rows in sides.items():
        for r in rows:
            seed = seeds[r]
            stratum = tuple((a, values[a][r]) for a in strata_axes)
            if seed is None:
                unmatched.append(UnmatchedTrial(ids[r], side, condition(r), None, "missing seed"))
                continue
            groups[side][(stratum, seed)].append(int(r))

    pairs: list[MatchedPair] = []
    integrity: list[IntegrityViolation] = []
    n_unchecked = 0
    other = {"A": "B", "B": "A"}
    for key in sorted(set(groups["A"]) | set(groups["B"]),
                      key=lambda k: (tuple(sort_key(v) for _, v in k[0]), sort_key(k[1]))):
        stratum, seed = key
        rows_a, rows_b = groups["A"].get(key, []), groups["B"].get(key, [])
        if len(rows_a) == 1 and len(rows_b) == 1:
            ra, rb = rows_a[0], rows_b[0]
            ha, hb = hashes[ra], hashes[rb]
            ta, tb = ids[ra], ids[rb]
            if ha is not None and hb is not None and ha != hb:
                integrity.append(IntegrityViolation(stratum, seed, ta, tb, ha, hb))
                continue
            n_unchecked += ha is None or hb is None
            pairs.append(MatchedPair(stratum, seed, ta, tb, ra, rb))
            continue
        for side, rows in (("A", rows_a), ("B", rows_b)):
            partner_rows = rows_b if side == "A" else rows_a
            for r in rows:
                if len(rows) > 1:
                    reason = f"{len(rows)} trials of {side} share seed {seed} in stratum {stratum_label(stratum)}"
                elif not partner_rows:
                    reason = f"no {other[side]} trial with seed {seed} in stratum {stratum_label(stratum)}"
                else:
                    reason = f"its {other[side]} partner is ambiguous ({len(partner_rows)} trials share seed {seed})"
                unmatched.append(UnmatchedTrial(ids[r], side, condition(r), seed, reason))
    if "data_order_hash" not in frame.columns:
        notes.append("results have no data_order_hash column: matched-seed integrity is unchecked")
    elif n_unchecked:
        notes.append(f"{n_unchecked} pair(s) lack a data_order_hash on one side: integrity unchecked for them")
    return Pairing(
        contrast=contrast,
        contrasted_axes=contrasted,
        strata_axes=strata_axes,
        pairs=tuple(pairs),
        unmatched=tuple(unmatched),
        integrity=tuple(integrity),
        n_unchecked=int(n_unchecked),
        notes=tuple(notes),
    )
