"""Error-structure metrics (docs/methods.md §6) against arithmetic done by hand."""

import numpy as np
import pytest

from analysis.errors import (
    affect_weighted_accuracy,
    class_isolation,
    error_severity,
    per_class_error_severity,
    quadrant_preservation,
)

# rows true, columns predicted
M = np.array([[5, 3, 2],
              [0, 4, 0],
              [1, 1, 8]])
C = np.array([[0.0, 1.0, 2.0],
              [1.0, 0.0, 4.0],
              [2.0, 4.0, 0.0]])
# class 0 and 1 in the (+v, +a) quadrant, class 2 in (-v, +a)
MU = np.array([[0.5, 0.5], [0.3, 0.8], [-0.4, 0.6]])


def test_error_severity_by_hand():
    # ES_0 = (3*1 + 2*2) / (3 + 2) = 7/5; class 1 has no errors (left out); ES_2 = (1*2 + 1*4) / 2 = 3
    per_class = per_class_error_severity(M, C)
    assert per_class[0] == pytest.approx(1.4)
    assert np.isnan(per_class[1])
    assert per_class[2] == pytest.approx(3.0)
    assert error_severity(M, C) == pytest.approx((1.4 + 3.0) / 2)


def test_quadrant_preservation_by_hand():
    # errors: 0->1 x3 (same quadrant), 0->2 x2, 2->0 x1, 2->1 x1 (different): 3 of 7
    assert quadrant_preservation(M, MU) == pytest.approx(3 / 7)


def test_affect_weighted_accuracy_by_hand():
    # sum M*C = 3*1 + 2*2 + 1*2 + 1*4 = 13; N = 24; max C = 4 -> 1 - 13/96
    assert affect_weighted_accuracy(M, C) == pytest.approx(1 - 13 / 96)


def test_perfect_classifier():
    perfect = np.diag([4, 5, 6])
    assert np.isnan(error_severity(perfect, C))
    assert np.isnan(quadrant_preservation(perfect, MU))
    assert affect_weighted_accuracy(perfect, C) == 1.0


def test_errors_at_the_farthest_class_give_zero_awa():
    worst = np.array([[0, 0, 3], [0, 0, 0], [0, 0, 0]])  # all 3 predictions land at cost 4 = max C
    cost = np.array([[0, 1, 4], [1, 0, 4], [4, 4, 0]], dtype=float)
    assert affect_weighted_accuracy(worst, cost) == 0.0


def test_diagonal_does_not_count_as_error_even_with_nonzero_cost_diagonal():
    cost = C + np.eye(3) * 100  # a (malformed) diagonal must not leak into error severity
    assert error_severity(M, cost) == pytest.approx(2.2)


def test_class_isolation():
    np.testing.assert_allclose(class_isolation(C), [1.0, 1.0, 2.0])


def test_class_isolation_leaves_undefined_distances_out():
    # class 2 has no centroid: its distances are NaN; the others keep their nearest defined neighbour
    nan = np.nan
    cost = [[0.0, 1.5, nan, 3.0], [1.5, 0.0, nan, 0.5], [nan, nan, 0.0, nan], [3.0, 0.5, nan, 0.0]]
    np.testing.assert_allclose(class_isolation(cost), [1.5, 0.5, nan, 0.5])
    from trainers import geometry  # the trainer's circumplex.json uses the same function

    assert geometry.class_isolation is class_isolation


def test_input_validation():
    with pytest.raises(ValueError, match="square"):
        error_severity(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        error_severity(M, np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        error_severity(-M, C)
    with pytest.raises(ValueError, match="centroids"):
        quadrant_preservation(M, MU[:2])
    with pytest.raises(ValueError, match="positive maximum"):
        affect_weighted_accuracy(M, np.zeros((3, 3)))
