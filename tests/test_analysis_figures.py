"""Figures: PNGs are written and show what they claim (pixels checked, not just file existence)."""

import matplotlib.image
import numpy as np
import pytest

from analysis.figures import plot_circumplex, plot_confusions, plot_dose_response, plot_paired_differences

NAMES = ["Neutral", "Anger", "Fear", "Happy"]
MU = np.array([[0.0, 0.0], [-0.5, 0.6], [-0.45, 0.62], [0.7, 0.3]])


def red_pixels(path):
    rgb = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    return int((np.abs(rgb - np.array([192, 57, 43])).max(axis=-1) <= 20).sum())


def test_circumplex_marks_the_degenerate_pair_only_when_given(tmp_path):
    marked, plain = tmp_path / "marked.png", tmp_path / "plain.png"
    plot_circumplex(MU, NAMES, radial_se=[0.01, 0.02, 0.02, 0.01], degenerate_pair=(1, 2), path=marked)
    plot_circumplex(MU, NAMES, radial_se=[0.01, 0.02, 0.02, 0.01], path=plain)
    assert matplotlib.image.imread(marked).shape[:2] == matplotlib.image.imread(plain).shape[:2]
    assert red_pixels(marked) > 100 and red_pixels(plain) == 0


def test_circumplex_rejects_mismatched_names():
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        plot_circumplex(MU, NAMES[:3])


def test_confusions_side_by_side_width_grows_with_panels(tmp_path):
    m = np.array([[5, 1, 0, 0], [1, 3, 2, 0], [0, 2, 3, 1], [0, 0, 1, 6]])
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    plot_confusions([m], NAMES, ["base"], path=one)
    plot_confusions([m, m, m], NAMES, ["base", "circumplex", "uniform"], path=three)
    assert matplotlib.image.imread(three).shape[1] > 2 * matplotlib.image.imread(one).shape[1]
    with pytest.raises(ValueError, match="expected"):
        plot_confusions([np.ones((3, 3))], NAMES, ["bad"])


def test_paired_differences_and_dose_response_write_pngs(tmp_path):
    fig = plot_paired_differences({"circ vs none": [0.01, 0.012, 0.009], "uniform vs circ": [0.001, -0.002, 0.0]},
                                  {"circ vs none": (0.009, 0.012)}, metric="P_MTL", path=tmp_path / "d.png")
    assert len(fig.axes[0].get_yticklabels()) == 2 and (tmp_path / "d.png").stat().st_size > 1000
    lam = [0.0, 0.5, 1.0, 2.0]
    values = np.array([[1.20, 1.21], [1.21, 1.22], [1.22, 1.23], [1.22, np.nan]])
    fig = plot_dose_response(lam, {"circumplex": values}, {"Anger F1": values - 1.1, "Fear F1": values - 1.0},
                             metric="P_MTL", path=tmp_path / "dose.png")
    assert len(fig.axes) == 2  # metric panel + per-class panel
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [1.205, 1.215, 1.225, 1.22])  # NaN seed ignored
