import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion

from trainers import metrics


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def test_expr_f1_matches_sklearn_macro(rng):
    for k in (7, 8):
        y = rng.integers(0, k, 300)
        yhat = np.where(rng.random(300) < 0.6, y, rng.integers(0, k, 300))
        ours = metrics.expr_f1(yhat, y, k)
        assert ours == pytest.approx(f1_score(y, yhat, average="macro", labels=list(range(k)), zero_division=0))


def test_expr_f1_over_present_classes_only(rng):
    y = rng.integers(0, 7, 200)  # class 7 never occurs (RAF-DB has no contempt)
    yhat = np.where(rng.random(200) < 0.5, y, rng.integers(0, 8, 200))
    ours = metrics.expr_f1(yhat, y, 8, classes=range(7))
    assert ours == pytest.approx(f1_score(y, yhat, average="macro", labels=list(range(7)), zero_division=0))


def test_confusion_rows_true_columns_predicted(rng):
    y, yhat = rng.integers(0, 5, 100), rng.integers(0, 5, 100)
    np.testing.assert_array_equal(metrics.confusion_matrix(yhat, y, 5), sk_confusion(y, yhat, labels=range(5)))
    assert np.trace(metrics.confusion_matrix(yhat, y, 5)) / 100 == pytest.approx(accuracy_score(y, yhat))


def test_au_f1_is_mean_of_binary_f1_ignoring_missing(rng):
    target = (rng.random((120, 12)) < 0.3).astype(float)
    pred = np.where(rng.random((120, 12)) < 0.7, target, 1 - target)
    target[rng.random((120, 12)) < 0.2] = np.nan
    expected = []
    for j in range(12):
        ok = ~np.isnan(target[:, j])
        expected.append(f1_score(target[ok, j], pred[ok, j], zero_division=0))
    assert metrics.au_f1(pred, target) == pytest.approx(np.mean(expected))


def test_ccc_properties(rng):
    x = rng.normal(size=500)
    x -= x.mean()  # CCC(x, -x) = -1 only for a centred x
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.ccc(x, -x) == pytest.approx(-1.0)
    # a shifted copy is perfectly correlated but not concordant
    assert metrics.ccc(x + 1.0, x) < 0.7
    pred = 0.5 * x + rng.normal(scale=0.1, size=500)
    r = np.corrcoef(pred, x)[0, 1]
    expected = 2 * r * pred.std() * x.std() / (pred.var() + x.var() + (pred.mean() - x.mean()) ** 2)
    assert metrics.ccc(pred, x) == pytest.approx(expected)


def test_p_mtl_sums_the_parts_a_dataset_has():
    assert metrics.p_mtl(0.438, 0.288, 0.489) == pytest.approx(1.215)  # study Table I base row
    assert metrics.p_mtl(0.5, 0.3, float("nan")) == pytest.approx(0.8)  # AffectNet: no AU
