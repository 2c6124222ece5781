"""The embedded synthetic world: procedurally drawn faces whose generative structure mirrors the study.

docs/design.md §8. Every frame has a true expression class ``k``; its
valence-arousal point is drawn around the class centroid (``WorldPreset.centroids``) and its action
units from the class-typical pattern (``WorldPreset.au_patterns``). What is drawn is a function of
that VA point and those AUs only (plus nuisance: identity, pose, lighting, noise), so classes that
are near on the circumplex look alike and the world's visual confusions follow its geometry
(docs/methods.md §4, §6).

The degenerate pair (anger-fear in ``affwild2_like``, anger-contempt in ``affectnet_like``) is
co-located in VA and told apart by its AUs alone. ``separability`` in [0, 1] is how visible those
distinguishing cues are: the drawn AUs of a pair frame are ``s * label + (1 - s) * shared`` where
``shared`` is drawn from the pair's pooled AU pattern, and the drawn VA is shifted by ``(1 - s)``
times the offset of the class centroid from the pair's mid-point. At ``s = 0`` the two classes' images
come from one distribution; at ``s = 1`` the AUs are drawn as labelled. The AU and VA *labels* never
depend on ``s`` (an AU-based cost still "knows" the pair differs), and neither does anything else:
the same ``(preset, n, seed)`` gives the same labels, identities and poses at every separability and
image size, so conditions compared on this world are paired by construction.

``affwild2_like`` is organised in videos (temporally smooth AR(1) processes for VA, AU intensity,
pose and lighting; expression segments of a few frames; a fixed identity per video) with ABAW-like
partial labels (docs/methods.md §1: per-video task availability plus frame-level gaps, sentinels already
converted to NaN / -1). ``affectnet_like`` is i.i.d. images, VA on almost all, no AU labels, and
contempt drawn with a unilateral smile: on one side of the mouth it looks like happiness although it
sits at the far corner of the circumplex (the study's far-corner visual confound, §5.8).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .labels import AFFECTNET, AFFWILD2, AU_NAMES, LabelSpace

__all__ = ["PRESETS", "WorldPreset", "synthetic"]

_AU = {name: j for j, name in enumerate(AU_NAMES)}
# Drawing channels: the 12 labelled AUs plus a right-side-only lip-corner pull, the unilateral smile
# of contempt (it has no ABAW AU of its own; AffectNet carries no AU labels anyway).
_UNI = len(AU_NAMES)
_N_DRAW = len(AU_NAMES) + 1
_F32 = np.float32


def _au_row(base: float = 0.05, **probs: float) -> tuple[float, ...]:
    """One class's AU activation probabilities in ``AU_NAMES`` order (unnamed units get ``base``)."""
    unknown = set(probs) - set(_AU)
    if unknown:
        raise ValueError(f"unknown AU names {sorted(unknown)}")
    return tuple(float(probs.get(name, base)) for name in AU_NAMES)


def _readonly(values, dtype=float) -> np.ndarray:
    arr = np.array(values, dtype=dtype)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class WorldPreset:
    """Generative parameters of one synthetic world (all arrays in the label space's class order).

    ``centroids`` are the true class means of VA (mixture mean where a class has ``va_modes``);
    each class draws ``centroid + mode offset + va_std * AR(1) deviation``. ``class_freq`` are frame
    frequencies. ``au_patterns[k, j]`` is the probability that AU ``AU_NAMES[j]`` is active in class
    ``k``; ``unilateral_smile[k]`` the probability of a right-side-only lip-corner pull.
    ``task_patterns`` lists ``((has_va, has_expr, has_au), frame_fraction)`` for videos;
    ``frame_gap_rate`` is the fraction of frames lost per task to short gaps inside annotated
    videos; ``va_missing_rate`` is the per-image VA dropout of image datasets.
    """

    name: str
    label_space: LabelSpace
    centroids: np.ndarray
    va_std: np.ndarray
    class_freq: np.ndarray
    au_patterns: np.ndarray
    unilateral_smile: np.ndarray
    degenerate_pair: tuple[int, int]
    va_modes: Mapping[int, np.ndarray] = field(default_factory=dict)
    separability: float = 0.5
    videos: bool = True
    video_len: tuple[int, int] = (30, 120)
    segment_len: tuple[int, int] = (3, 12)
    va_rho: float = 0.8
    au_flip_prob: float = 0.01
    task_patterns: tuple[tuple[tuple[bool, bool, bool], float], ...] = (((True, True, True), 1.0),)
    frame_gap_rate: float = 0.0
    va_missing_rate: float = 0.0

    def __post_init__(self):
        k = self.label_space.num_classes
        arrays = {
            "centroids": (k, 2), "va_std": (k, 2), "class_freq": (k,),
            "au_patterns": (k, len(AU_NAMES)), "unilateral_smile": (k,),
        }
        for attr, shape in arrays.items():
            arr = _readonly(getattr(self, attr))
            if arr.shape != shape:
                raise ValueError(f"preset {self.name!r}: {attr} has shape {arr.shape}, expected {shape}")
            object.__setattr__(self, attr, arr)
        if not np.isclose(self.class_freq.sum(), 1.0) or (self.class_freq <= 0).any():
            raise ValueError(f"preset {self.name!r}: class_freq must be positive and sum to 1")
        modes = {}
        for cls, offsets in dict(self.va_modes).items():
            off = _readonly(offsets)
            if off.ndim != 2 or off.shape[1] != 2 or not np.allclose(off.mean(0), 0.0, atol=1e-9):
                raise ValueError(f"preset {self.name!r}: va_modes[{cls}] must be (M, 2) offsets with mean 0")
            modes[int(cls)] = off
        object.__setattr__(self, "va_modes", modes)
        a, b = self.degenerate_pair
        # Separability 0 must make the pair's images one distribution: the centroid shift handles the
        # means, so their dispersions have to agree and neither may be multimodal.
        if not np.allclose(self.va_std[a], self.va_std[b]) or a in modes or b in modes:
            raise ValueError(f"preset {self.name!r}: the degenerate pair needs equal, unimodal VA spread")
        if not 0.0 <= self.separability <= 1.0:
            raise ValueError(f"preset {self.name!r}: separability must lie in [0, 1]")
        total = sum(frac for _, frac in self.task_patterns)
        if not np.isclose(total, 1.0):
            raise ValueError(f"preset {self.name!r}: task_patterns fractions sum to {total}, not 1")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_space.class_names

    @property
    def num_classes(self) -> int:
        return self.label_space.num_classes

    def va_covariances(self) -> np.ndarray:
        """True (K, 2, 2) VA covariance of each class (mode spread plus within-mode spread)."""
        cov = np.zeros((self.num_classes, 2, 2))
        for k in range(self.num_classes):
            cov[k] = np.diag(self.va_std[k] ** 2)
            if k in self.va_modes:
                off = self.va_modes[k]
                cov[k] += off.T @ off / len(off)
        return cov


_ABAW = {name: i for i, name in enumerate(AFFWILD2.class_names)}
_AFN = {name: i for i, name in enumerate(AFFECTNET.class_names)}

# Aff-Wild2-like circumplex (study §3.3, Fig. 4; its numbers are not legible, these are plausible):
# anger and fear 0.064 apart (the closest pair); anger's neighbours within a sixth of the largest
# distance are fear, disgust and the catch-all "Other" (a broad three-mode mixture reaching from the
# negative-aroused cluster to the middle); anger-happiness (1.19) is the farthest pair.
AFFWILD2_LIKE = WorldPreset(
    name="affwild2_like",
    label_space=AFFWILD2,
    centroids=[
        (0.04, 0.02),    # Neutral
        (-0.45, 0.42),   # Anger
        (-0.47, 0.25),   # Disgust
        (-0.40, 0.46),   # Fear
        (0.70, 0.12),    # Happiness
        (-0.36, -0.22),  # Sadness
        (0.10, 0.62),    # Surprise
        (-0.30, 0.32),   # Other
    ],
    # anger and fear share a spread that is broad along arousal (study §3.6)
    va_std=[(0.10, 0.10), (0.07, 0.10), (0.07, 0.08), (0.07, 0.10),
            (0.12, 0.12), (0.10, 0.09), (0.10, 0.10), (0.12, 0.11)],
    va_modes={_ABAW["Other"]: [(-0.16, 0.08), (0.22, -0.02), (-0.06, -0.06)]},
    # ABAW-like long tail; the rare classes keep 2.5-3% so that n ~ 3000 frames holds 75-90 of each
    class_freq=[0.30, 0.03, 0.025, 0.03, 0.15, 0.10, 0.05, 0.315],
    au_patterns=[
        _au_row(AU25=0.10),                                                            # Neutral
        _au_row(AU4=0.90, AU7=0.80, AU10=0.20, AU15=0.20, AU23=0.75, AU24=0.70,
                AU25=0.15, AU6=0.10),                                                  # Anger
        _au_row(AU4=0.70, AU6=0.30, AU7=0.50, AU10=0.85, AU15=0.50, AU23=0.10,
                AU24=0.10, AU25=0.50, AU26=0.10, AU1=0.10),                            # Disgust
        _au_row(AU1=0.85, AU2=0.75, AU4=0.60, AU7=0.20, AU10=0.10, AU15=0.20,
                AU25=0.85, AU26=0.60),                                                 # Fear
        _au_row(AU6=0.85, AU7=0.30, AU10=0.30, AU12=0.95, AU25=0.60, AU26=0.20,
                base=0.03),                                                            # Happiness
        _au_row(AU1=0.75, AU2=0.10, AU4=0.65, AU6=0.10, AU15=0.80, AU23=0.10,
                AU24=0.20, AU25=0.10),                                                 # Sadness
        _au_row(AU1=0.90, AU2=0.90, AU12=0.10, AU25=0.90, AU26=0.80, base=0.04),       # Surprise
        _au_row(base=0.22),                                                            # Other
    ],
    unilateral_smile=[0.0] * 8,
    degenerate_pair=(_ABAW["Anger"], _ABAW["Fear"]),
    separability=0.5,
    videos=True,
    video_len=(30, 120),
    segment_len=(3, 8),
    va_rho=0.6,
    # (VA, EXPR, AU) availability per video, as frame fractions; with the gaps about a third of the
    # frames carry all three tasks and about half carry EXPR and VA (the centroid subset, docs/methods.md §4).
    task_patterns=(
        ((True, True, True), 0.38), ((True, True, False), 0.20), ((True, False, True), 0.12),
        ((True, False, False), 0.10), ((False, True, True), 0.06), ((False, True, False), 0.06),
        ((False, False, True), 0.08),
    ),
    frame_gap_rate=0.05,
)

# AffectNet-8-like circumplex: anger and contempt 0.064 apart (the closest pair), contempt-happy the
# farthest pair (1.29), so contempt's happy-looking unilateral smile is the far-corner confound.
AFFECTNET_LIKE = WorldPreset(
    name="affectnet_like",
    label_space=AFFECTNET,
    centroids=[
        (0.00, 0.00),    # Neutral
        (0.68, 0.12),    # Happy
        (-0.52, -0.28),  # Sad
        (0.22, 0.66),    # Surprise
        (-0.12, 0.74),   # Fear
        (-0.58, 0.30),   # Disgust
        (-0.50, 0.56),   # Anger
        (-0.55, 0.52),   # Contempt
    ],
    va_std=[(0.10, 0.10), (0.13, 0.12), (0.11, 0.10), (0.11, 0.10),
            (0.10, 0.10), (0.10, 0.10), (0.10, 0.12), (0.10, 0.12)],
    # AffectNet-8's imbalance, softened at the tail (contempt and disgust are ~1.3% there)
    class_freq=[0.26, 0.40, 0.09, 0.06, 0.04, 0.03, 0.09, 0.03],
    au_patterns=[
        _au_row(AU25=0.10),                                                            # Neutral
        _au_row(AU6=0.80, AU7=0.20, AU10=0.30, AU12=0.95, AU25=0.60, AU26=0.20,
                base=0.03),                                                            # Happy
        _au_row(AU1=0.75, AU4=0.60, AU15=0.80, AU24=0.20, AU2=0.10),                   # Sad
        _au_row(AU1=0.90, AU2=0.90, AU12=0.10, AU25=0.90, AU26=0.80, base=0.04),       # Surprise
        _au_row(AU1=0.85, AU2=0.70, AU4=0.60, AU7=0.20, AU25=0.85, AU26=0.60),         # Fear
        _au_row(AU4=0.70, AU6=0.30, AU7=0.50, AU10=0.85, AU15=0.50, AU25=0.50),        # Disgust
        _au_row(AU4=0.90, AU7=0.80, AU10=0.20, AU15=0.20, AU23=0.75, AU24=0.70),       # Anger
        _au_row(AU4=0.15, AU7=0.15, AU24=0.10, AU12=0.05),                             # Contempt
    ],
    unilateral_smile=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9],
    degenerate_pair=(_AFN["Anger"], _AFN["Contempt"]),
    separability=0.5,
    videos=False,
    va_missing_rate=0.01,
    au_flip_prob=0.0,
)

PRESETS: dict[str, WorldPreset] = {p.name: p for p in (AFFWILD2_LIKE, AFFECTNET_LIKE)}


def synthetic(preset: str, n: int, seed: int, image_size: int = 64,
              separability: float | None = None) -> pd.DataFrame:
    """Draw ``n`` frames of the synthetic world ``preset`` ("affwild2_like" or "affectnet_like").

    Deterministic in its arguments. Returns the index contract of ``trainers.data`` with an
    ``image`` column ((H, W, 3) uint8 arrays): ``valence``, ``arousal`` (NaN missing), ``expr``
    (-1 missing), ``AU1 … AU26`` (0/1, NaN missing), ``group`` and ``frame``. ``separability``
    (default: the preset's) is how visible the AUs separating the degenerate pair are; labels do
    not depend on it. ``df.attrs`` holds ``label_space``, ``preset`` and ``separability``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    p = PRESETS[preset]
    n, seed, image_size = int(n), int(seed), int(image_size)
    if n < 1:
        raise ValueError(f"synthetic: n must be >= 1, got {n}")
    if image_size < 8:
        raise ValueError(f"synthetic: image_size must be >= 8 pixels, got {image_size}")
    sep = p.separability if separability is None else float(separability)
    if not 0.0 <= sep <= 1.0:
        raise ValueError(f"synthetic: separability must lie in [0, 1], got {separability}")

    key = zlib.crc32(p.name.encode())
    # Labels, identities and poses come from a stream that ignores image_size and separability, so
    # worlds that differ only in those are paired frame by frame; pixel noise has its own stream.
    world = _draw_world(p, n, np.random.default_rng([seed, key, 0]))
    params = _appearance(p, world, sep)
    images = _render(params, image_size, np.random.default_rng([seed, key, 1, image_size]))

    data = {
        "image": pd.Series(list(images), dtype=object),
        "valence": world["valence"],
        "arousal": world["arousal"],
        "expr": world["expr"],
    }
    for j, au in enumerate(AU_NAMES):
        data[au] = world["au"][:, j]
    data["group"] = world["group"]
    data["frame"] = world["frame"]
    df = pd.DataFrame(data)
    df.attrs.update(label_space=p.label_space.name, preset=p.name, separability=sep)
    return df


# --------------------------------------------------------------------------------------------------
# The generative world (labels and latent appearance factors), independent of rendering.


def _quotas(freq: np.ndarray, n: int) -> np.ndarray:
    """Frame counts per class summing to ``n`` (largest remainder), so small draws keep the tail."""
    raw = freq * n
    q = np.floor(raw).astype(int)
    q[np.argsort(-(raw - q), kind="stable")[: n - q.sum()]] += 1
    return q


def _segments(p: WorldPreset, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame class and segment-start flag: each class's quota cut into expression segments."""
    lo, hi = p.segment_len if p.videos else (1, 1)
    classes, lengths = [], []
    for k, q in enumerate(_quotas(p.class_freq, n)):
        if q == 0:
            continue
        lens = rng.integers(lo, hi + 1, size=q // lo + 1)
        cut = int(np.searchsorted(np.cumsum(lens), q))
        lens = lens[: cut + 1]
        lens[-1] -= lens.sum() - q
        if len(lens) > 1 and lens[-1] < lo:  # fold a stub into its neighbour
            lens[-2] += lens[-1]
            lens = lens[:-1]
        classes.extend([k] * len(lens))
        lengths.extend(lens.tolist())
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)[order]
    expr = np.repeat(np.asarray(classes)[order], lengths)
    start = np.zeros(n, bool)
    start[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    return expr, start


def _video_lengths(p: WorldPreset, n: int, rng: np.random.Generator) -> np.ndarray:
    if not p.videos:
        return np.ones(n, int)
    lo, hi = p.video_len
    lens = rng.integers(lo, hi + 1, size=n // lo + 1)
    cut = int(np.searchsorted(np.cumsum(lens), n))
    lens = lens[: cut + 1]
    lens[-1] -= lens.sum() - n
    if len(lens) > 1 and lens[-1] < lo // 2:
        lens[-2] += lens[-1]
        lens = lens[:-1]
    return lens


def _ar1(z: np.ndarray, rho: np.ndarray, reset: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Unit-variance AR(1) along rows, restarted (stationary draw) where ``reset``.

    ``pos`` is each row's index within its group; rows at position t only depend on row t-1 of the
    same group, so the recursion runs over positions (<= the longest video), vectorised over groups.
    """
    x = z.copy()
    innov = np.sqrt(1.0 - rho**2)
    for t in range(1, int(pos.max()) + 1 if len(pos) else 0):
        rows = np.flatnonzero(pos == t)
        prev = rho * x[rows - 1] + innov * z[rows]
        x[rows] = np.where(reset[rows], z[rows], prev)
    return x


def _assign_patterns(p: WorldPreset, lens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Task-availability pattern per video, filled greedily towards the target frame fractions."""
    target = np.array([frac for _, frac in p.task_patterns])
    got = np.zeros(len(target))
    out = np.empty(len(lens), int)
    total = 0
    for v in rng.permutation(len(lens)):
        total += lens[v]
        deficit = target * total - got + 1e-6 * rng.random(len(target))
        j = int(np.argmax(deficit))
        out[v] = j
        got[j] += lens[v]
    return out


def _gaps(lens: np.ndarray, starts: np.ndarray, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Frame mask of short annotation gaps (2-8 frames) covering about ``rate`` of each video."""
    mask = np.zeros(n, bool)
    if rate <= 0:
        return mask
    counts = rng.poisson(rate * lens / 5.0)
    for v in np.flatnonzero(counts):
        for _ in range(counts[v]):
            length = int(rng.integers(2, 9))
            s = int(rng.integers(0, max(1, lens[v] - length + 1)))
            mask[starts[v] + s: starts[v] + min(lens[v], s + length)] = True
    return mask


def _draw_world(p: WorldPreset, n: int, rng: np.random.Generator) -> dict:
    expr, seg_start = _segments(p, n, rng)
    lens = _video_lengths(p, n, rng)
    vstart = np.concatenate([[0], np.cumsum(lens)[:-1]])
    video = np.repeat(np.arange(len(lens)), lens)
    pos = np.arange(n) - vstart[video]
    new_video = pos == 0
    seg_start = seg_start | new_video  # a video boundary also starts a new expression segment
    seg = np.cumsum(seg_start) - 1
    n_seg = int(seg[-1]) + 1

    # AU states are held over a segment and flicker per frame; ``shared`` is the same process under
    # the pair's pooled pattern, the drawn AUs of pair frames at separability 0 (module docstring).
    pattern = np.concatenate([p.au_patterns, p.unilateral_smile[:, None]], axis=1)  # (K, 13)
    a, b = p.degenerate_pair
    pooled = (pattern[a] + pattern[b]) / 2
    u_label, u_shared = rng.random((n_seg, _N_DRAW)), rng.random((n_seg, _N_DRAW))
    seg_cls = expr[seg_start]
    state = (u_label < pattern[seg_cls])[seg]
    shared = (u_shared < pooled)[seg]
    flip = rng.random((n, _N_DRAW)) < p.au_flip_prob
    flip[:, _UNI] = False  # label flicker of the annotated AUs only; the smile channel is not labelled
    state ^= flip
    shared ^= flip

    # One pass of AR(1) processes: VA deviation and AU intensity restart with each segment, pose and
    # lighting with each video (identity is constant per video).
    rho = np.array([p.va_rho] * 2 + [0.85] * _N_DRAW + [0.93] * 4 + [0.97] * 2)
    reset = np.concatenate([np.repeat(seg_start[:, None], 2 + _N_DRAW, 1),
                            np.repeat(new_video[:, None], 6, 1)], axis=1)
    ar = _ar1(rng.standard_normal((n, len(rho))), rho, reset, pos)
    va_dev, au_int, pose, light = ar[:, :2], ar[:, 2:2 + _N_DRAW], ar[:, 2 + _N_DRAW:-2], ar[:, -2:]

    mode_off = np.zeros((n_seg, 2))
    for k, off in p.va_modes.items():
        idx = np.flatnonzero(seg_cls == k)
        mode_off[idx] = off[rng.integers(0, len(off), size=len(idx))]
    va = np.clip(p.centroids[expr] + mode_off[seg] + p.va_std[expr] * va_dev, -1.0, 1.0)

    ident = rng.random((len(lens), 17))[video]

    # Labels and their availability (docs/methods.md §1 conventions: NaN / -1 mark a missing label).
    has_va, has_expr, has_au = np.ones(n, bool), np.ones(n, bool), np.ones(n, bool)
    if p.videos:
        pats = np.array([pat for pat, _ in p.task_patterns])[_assign_patterns(p, lens, rng)][video]
        has_va, has_expr, has_au = pats[:, 0].copy(), pats[:, 1].copy(), pats[:, 2].copy()
        for m in (has_va, has_expr, has_au):
            m &= ~_gaps(lens, vstart, n, p.frame_gap_rate, rng)
        group = np.array([f"vid{v:04d}" for v in range(len(lens))], dtype=object)[video]
    else:
        has_va = rng.random(n) >= p.va_missing_rate
        group = np.array([f"img{i:06d}" for i in range(n)], dtype=object)
    if not p.label_space.has_au:
        has_au[:] = False

    au = state[:, : len(AU_NAMES)].astype(float)
    au[~has_au] = np.nan
    return {
        "expr_true": expr, "va_true": va, "state": state, "shared": shared, "au_int": au_int,
        "pose": pose, "light": light, "ident": ident,
        "valence": np.where(has_va, va[:, 0], np.nan),
        "arousal": np.where(has_va, va[:, 1], np.nan),
        "expr": np.where(has_expr, expr, -1).astype(np.int64),
        "au": au,
        "group": group,
        "frame": pos.astype(np.int64),
    }


def _appearance(p: WorldPreset, w: dict, sep: float) -> dict:
    """Per-frame drawing parameters from the world's latent state (what is drawn, not how)."""
    expr = w["expr_true"]
    a, b = p.degenerate_pair
    pair = (expr == a) | (expr == b)
    visible = w["state"].astype(float)
    visible[pair] = sep * visible[pair] + (1.0 - sep) * w["shared"][pair]
    # an active AU is drawn at 0.6-1.0 of full strength, smooth in time
    drawn_au = visible * (0.6 + 0.4 / (1.0 + np.exp(-1.5 * w["au_int"])))
    va = w["va_true"].copy()
    mid = (p.centroids[a] + p.centroids[b]) / 2
    va[pair] -= (1.0 - sep) * (p.centroids[expr[pair]] - mid)
    va = np.clip(va, -1.0, 1.0)

    idn, pose, light = w["ident"], w["pose"], w["light"]
    tone = idn[:, 0:1]
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array([0.38, 0.24, 0.16])
    skin = skin * (0.95 + 0.1 * idn[:, 1:4])
    hair_t = idn[:, 4:5]
    hair = (1 - hair_t) * np.array([0.08, 0.06, 0.05]) + hair_t * np.array([0.62, 0.45, 0.25])
    bg_hue = idn[:, 5:8]
    bg = 0.2 + 0.6 * (0.5 * bg_hue + 0.5 * idn[:, 8:9])
    iris = 0.05 + 0.35 * idn[:, 9:12] * np.array([0.8, 0.7, 1.0])
    return {
        "au": drawn_au.astype(_F32),
        "v": va[:, 0].astype(_F32), "a": va[:, 1].astype(_F32),
        "cx": (0.5 + 0.02 * pose[:, 0]).astype(_F32),
        "cy": (0.53 + 0.02 * pose[:, 1]).astype(_F32),
        "R": (0.40 * (0.95 + 0.08 * idn[:, 12]) * (1 + 0.03 * pose[:, 2])).astype(_F32),
        "roll": (0.05 * pose[:, 3]).astype(_F32),
        "gain": (1.0 + 0.12 * light[:, 0]).astype(_F32),
        "grad": (0.3 * light[:, 1]).astype(_F32),
        "face_w": (0.72 + 0.14 * idn[:, 13]).astype(_F32),
        "eye_x": (0.34 * (0.94 + 0.12 * idn[:, 14])).astype(_F32),
        "mouth_y": (0.48 + 0.04 * idn[:, 15]).astype(_F32),
        "fringe": (-0.72 + 0.2 * idn[:, 16]).astype(_F32),
        "skin": skin.astype(_F32), "hair": hair.astype(_F32), "bg": bg.astype(_F32),
        "iris": iris.astype(_F32),
    }


# --------------------------------------------------------------------------------------------------
# Rendering: signed distances on numpy coordinate grids, anti-aliased over one pixel, vectorised over
# a chunk of images. Face coordinates: origin at the face centre, y down, 1 unit = face half-height.

_CHUNK_PIXELS = 1 << 19  # images per chunk x pixels per image: temporaries stay cache-sized


def _render(g: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    n = len(g["v"])
    out = np.empty((n, size, size, 3), np.uint8)
    coords = ((np.arange(size, dtype=_F32) + 0.5) / size).astype(_F32)
    chunk = max(16, _CHUNK_PIXELS // (size * size))
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img = _render_chunk({k: v[sl] for k, v in g.items()}, coords, size)  # (3, b, H, W)
        # sensor noise, std 0.03: uniform rather than Gaussian because it is several times cheaper
        noise = rng.random(img.shape, dtype=_F32)
        noise -= _F32(0.5)
        noise *= _F32(0.03 * np.sqrt(12.0))
        img += noise
        img *= _F32(255.0)
        img += _F32(0.5)
        np.clip(img, 0, 255, out=img)
        for c in range(3):
            out[sl, :, :, c] = img[c]
    return out


def _cover(sd: np.ndarray, ppu: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Pixel coverage of the region ``sd < 0`` (``sd`` in face units), a one-pixel linear ramp."""
    return np.clip(0.5 - sd * (ppu / soft), 0.0, 1.0)


def _ellipse_sd(X, Y, x0, y0, rx, ry):
    """First-order signed distance to an axis-aligned ellipse (exact on the boundary)."""
    u, v = (X - x0) / rx, (Y - y0) / ry
    grad = 2.0 * np.sqrt((u / rx) ** 2 + (v / ry) ** 2) + 1e-6
    return (u * u + v * v - 1.0) / grad


def _capsule_sd(X, Y, x0, y0, x1, y1, r):
    bx, by = x1 - x0, y1 - y0
    px, py = X - x0, Y - y0
    h = np.clip((px * bx + py * by) / (bx * bx + by * by), 0.0, 1.0)
    return np.sqrt((px - bx * h) ** 2 + (py - by * h) ** 2) - r


def _band(d, lo, hi, ppu):
    """Coverage of ``lo < d < hi`` along one axis."""
    return np.clip((d - lo) * ppu + 0.5, 0.0, 1.0) * np.clip((hi - d) * ppu + 0.5, 0.0, 1.0)


def _render_chunk(g: dict, coords: np.ndarray, size: int) -> np.ndarray:
    B = len(g["v"])

    def col(x):  # per-image scalar -> broadcastable over (B, h, w)
        return x[:, None, None]

    cx, cy, R = g["cx"], g["cy"], g["R"]
    cos, sin = np.cos(g["roll"]), np.sin(g["roll"])
    ppu = col(R * size)  # pixels per face unit

    def grid(x0, x1, y0, y1):
        """Face coordinates of the pixel window covering the face-unit box in every image."""
        bx = np.array([x0, x1, x0, x1], _F32)[None]
        by = np.array([y0, y0, y1, y1], _F32)[None]
        px = cx[:, None] + R[:, None] * (cos[:, None] * bx - sin[:, None] * by)
        py = cy[:, None] + R[:, None] * (sin[:, None] * bx + cos[:, None] * by)
        c0, c1 = (int(np.clip(np.floor(px.min() * size) - 1, 0, size)),
                  int(np.clip(np.ceil(px.max() * size) + 2, 0, size)))
        r0, r1 = (int(np.clip(np.floor(py.min() * size) - 1, 0, size)),
                  int(np.clip(np.ceil(py.max() * size) + 2, 0, size)))
        dx = coords[None, None, c0:c1] - col(cx)
        dy = coords[None, r0:r1, None] - col(cy)
        X = (col(cos) * dx + col(sin) * dy) / col(R)
        Y = (col(cos) * dy - col(sin) * dx) / col(R)
        return (slice(r0, r1), slice(c0, c1)), X, Y

    def paint(win, cov, color):
        # channel planes are painted one at a time: far faster than broadcasting over a last axis of 3
        rs, cs = win
        color = np.broadcast_to(np.asarray(color, _F32), (B, 3))
        for c in range(3):
            region = img[c, :, rs, cs]
            region += cov * (col(color[:, c]) - region)

    au = {name: col(g["au"][:, j]) for name, j in _AU.items()}
    uni = col(g["au"][:, _UNI])
    v, a = col(g["v"]), col(g["a"])
    skin, hair = g["skin"], g["hair"]

    # background with a vertical gradient (nuisance)
    img = np.empty((3, B, size, size), _F32)
    img[:] = g["bg"].T[:, :, None, None] * (0.8 + 0.4 * coords[None, None, :, None])

    # head: neck, hair mass, face, fringe
    fw = col(g["face_w"])
    win, X, Y = grid(-1.2, 1.2, -1.35, 2.5)
    paint(win, np.clip((0.34 - np.abs(X)) * ppu + 0.5, 0, 1) * np.clip((Y - 0.55) * ppu + 0.5, 0, 1),
          skin * 0.82)
    paint(win, _cover(_ellipse_sd(X, Y, 0.0, -0.12, fw + 0.12, 1.04), ppu), hair)
    face = _cover(_ellipse_sd(X, Y, 0.0, 0.0, fw, 1.0), ppu)
    paint(win, face, skin)
    fringe = col(g["fringe"]) + 0.05 * np.sin(6.0 * X + 7.0 * fw)
    paint(win, face * np.clip((fringe - Y) * ppu + 0.5, 0, 1), hair)

    def cheek_raise(X):
        # AU6 on both sides; the unilateral smile raises the right cheek as happiness raises both
        right = 1.0 / (1.0 + np.exp(-X / 0.03))
        return au["AU6"] + (np.maximum(au["AU6"], uni) - au["AU6"]) * right

    # cheek raiser shows as a soft blush; the nose is identity only
    win, X, Y = grid(-0.75, 0.75, -0.1, 0.45)
    Xa = np.abs(X)
    blush = _cover(_ellipse_sd(Xa, Y, 0.45, 0.22, 0.17, 0.12), ppu, soft=3.0) * 0.7 * cheek_raise(X)
    paint(win, blush, skin * np.array([1.0, 0.72, 0.72], _F32))
    paint(win, _cover(_capsule_sd(X, Y, 0.0, 0.0, 0.0, 0.20, 0.03), ppu), skin * 0.78)

    # eyes: arousal and brow raisers widen them, AU6/AU7 narrow them (drawn on |X|, mirrored)
    ex, ey = col(g["eye_x"]), -0.08
    win, X, Y = grid(-0.75, 0.75, -0.35, 0.15)
    Xa = np.abs(X)
    au6 = cheek_raise(X)
    opening = np.clip(1.0 + 0.55 * a + 0.2 * au["AU1"] + 0.25 * au["AU2"] - 0.45 * au["AU7"]
                      - 0.3 * au6, 0.1, 2.0)
    eh = 0.085 * opening
    eyc = ey - 0.025 * au6  # the raised cheek pushes the lower lid up
    paint(win, _cover(_ellipse_sd(Xa, Y, ex, eyc, 0.205, eh + 0.03), ppu), hair * 0.5 + skin * 0.3)
    sclera = _cover(_ellipse_sd(Xa, Y, ex, eyc, 0.175, eh), ppu)
    paint(win, sclera, (0.93, 0.93, 0.93))
    iris = sclera * _cover(np.sqrt((Xa - ex) ** 2 + (Y - ey) ** 2) - 0.075, ppu)
    paint(win, iris, g["iris"])

    # brows: AU1 raises the inner end, AU2 the outer end, AU4 lowers and knits them; negative
    # valence lowers the inner ends a little
    base = ey - 0.26
    x_in = 0.17 - 0.09 * au["AU4"]
    y_in = base - 0.17 * au["AU1"] + 0.13 * au["AU4"] - 0.05 * v
    y_out = base - 0.17 * au["AU2"] + 0.03 * au["AU4"] - 0.04 * a
    win, X, Y = grid(-0.75, 0.75, -0.75, -0.05)
    paint(win, _cover(_capsule_sd(np.abs(X), Y, x_in, y_in, 0.55, y_out, 0.055), ppu), hair * 0.8)

    # mouth: AU12 lifts the corners, AU15 drops them, valence curves it; AU25/26 and arousal open
    # it; AU23/24 narrow and thin the lips; AU10 raises the upper lip over the teeth; the unilateral
    # smile lifts, stretches and parts only the right half, as far as a happy one (contempt, the
    # far-corner confound: its negative valence alone would pull the corner down).
    mw = 0.34 * (1 + 0.20 * au["AU12"] + 0.08 * au["AU25"] - 0.18 * au["AU23"] - 0.12 * au["AU24"])
    mw_r = mw + 0.06 * uni
    lift = 0.17 * au["AU12"] - 0.12 * au["AU15"] + 0.12 * v
    lift_r = 0.30 * uni
    opening = np.maximum(0.015 + 0.07 * au["AU25"] + 0.10 * au["AU26"] + 0.04 * np.maximum(a, 0)
                         - 0.012 * au["AU24"], 0.008)
    squeeze = np.clip(1 - 0.55 * au["AU24"] - 0.35 * au["AU23"], 0.25, 1)
    t_up, t_lo = 0.05 * squeeze, 0.06 * squeeze
    raise10 = 0.05 * au["AU10"]
    win, X, Y = grid(-0.8, 0.8, 0.0, 1.0)
    right = 1.0 / (1.0 + np.exp(-X / 0.03))
    half = mw + (mw_r - mw) * right
    opening = opening + 0.06 * uni * right
    t = X / half
    yc = col(g["mouth_y"]) - (lift + lift_r * right) * t * t
    env = np.sqrt(np.clip(1 - t * t, 0, 1))
    dY = Y - yc
    horiz = np.clip((half - np.abs(X)) * ppu + 0.5, 0, 1)
    top, bottom = -(opening + raise10) * env, opening * env
    thick = 0.35 + 0.65 * env
    paint(win, _band(dY, top - t_up * thick, bottom + t_lo * thick, ppu) * horiz,
          skin * np.array([0.80, 0.50, 0.50], _F32) + np.array([0.08, 0.0, 0.0], _F32))
    paint(win, _band(dY, top, bottom, ppu) * horiz, (0.22, 0.05, 0.07))
    teeth = np.minimum(0.5 * (bottom - top), 0.03)
    paint(win, _band(dY, top, top + teeth, ppu) * horiz, (0.93, 0.92, 0.86))

    # lighting: a global gain and a left-right gradient, both smooth in time
    img *= (col(g["gain"]) + col(g["grad"]) * (coords[None, None, :] - 0.5))[None]
    return img
