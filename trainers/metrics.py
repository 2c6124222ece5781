"""Evaluation metrics (docs/methods.md §3): CCC, EXPR macro-F1 / accuracy, AU F1, P_MTL, confusion."""

from __future__ import annotations

import numpy as np


def ccc(pred, target) -> float:
    """Concordance correlation coefficient with population moments."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if len(pred) < 2:
        return float("nan")
    mp, mt = pred.mean(), target.mean()
    cov = ((pred - mp) * (target - mt)).mean()
    denom = pred.var() + target.var() + (mp - mt) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """Rows true, columns predicted."""
    pred, target = np.asarray(pred, np.int64), np.asarray(target, np.int64)
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(0) + confusion.sum(1)  # 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def expr_f1(pred, target, num_classes: int, classes=None) -> float:
    """Macro-F1 over ``classes`` (default all K; RAF-DB scores its 7 present classes)."""
    f1 = per_class_f1(confusion_matrix(pred, target, num_classes))
    idx = list(range(num_classes)) if classes is None else list(classes)
    return float(f1[idx].mean())


def binary_f1(pred, target) -> float:
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    tp = np.sum(pred & target)
    denom = pred.sum() + target.sum()
    return float(2 * tp / denom) if denom > 0 else 0.0


def au_f1_per_unit(pred, target) -> np.ndarray:
    """Binary F1 per AU column; ``target`` NaN entries are ignored; NaN for a unit with no label."""
    pred, target = np.asarray(pred), np.asarray(target, np.float64)
    out = np.full(target.shape[1], np.nan)
    for j in range(target.shape[1]):
        valid = ~np.isnan(target[:, j])
        if valid.any():
            out[j] = binary_f1(pred[valid, j] > 0.5, target[valid, j] > 0.5)
    return out


def au_f1(pred, target) -> float:
    """Mean of the per-AU binary F1 scores (docs/methods.md §3); ``pred`` are 0/1 decisions."""
    per_unit = au_f1_per_unit(pred, target)
    return float(np.nanmean(per_unit)) if np.isfinite(per_unit).any() else float("nan")


def p_mtl(va_ccc: float = float("nan"), expr_f1: float = float("nan"), au_f1: float = float("nan")) -> float:
    """P_MTL = (CCC_v + CCC_a)/2 + F1_EXPR + F1_AU; a dataset without a task reports the parts it has."""
    parts = [x for x in (va_ccc, expr_f1, au_f1) if x is not None and np.isfinite(x)]
    return float(sum(parts)) if parts else float("nan")
