"""Label spaces and sentinels of the supported datasets (docs/methods.md §1).

Every loader returns an index DataFrame with the columns of ``INDEX_COLUMNS`` (plus ``path`` or
``image``); missing labels are NaN (VA, AU) or -1 (EXPR), whatever sentinel the source used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26",
)
ABAW_EXPR: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)
AFFECTNET_EXPR: tuple[str, ...] = (
    "Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
)
# RAF-DB basic labels (1-based in the file) mapped into AffectNet order (docs/methods.md §1).
RAFDB_EXPR: tuple[str, ...] = (
    "Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral",
)
RAFDB_TO_AFFECTNET: dict[int, int] = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}

# Sentinels of the source formats.
ABAW_VA_INVALID = -5.0
ABAW_EXPR_INVALID = -1
ABAW_AU_INVALID = -1
AFFECTNET_VA_MISSING = -2.0
AFFECTNET_DROPPED = (8, 9, 10)  # None, Uncertain, No-Face

INDEX_COLUMNS: tuple[str, ...] = ("valence", "arousal", "expr", *AU_NAMES, "group", "frame")


@dataclass(frozen=True)
class LabelSpace:
    """What a dataset annotates, in the order its ``expr`` column uses."""

    name: str
    class_names: tuple[str, ...]
    has_va: bool
    has_expr: bool
    has_au: bool
    # classes that count in macro-F1 (RAF-DB lacks contempt in AffectNet order)
    f1_classes: tuple[int, ...] = field(default=())
    # the co-located ("degenerate") pair of the study on this label space, if any
    degenerate_pair: tuple[str, str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def scored_classes(self) -> tuple[int, ...]:
        return self.f1_classes or tuple(range(self.num_classes))

    @property
    def au_names(self) -> tuple[str, ...]:
        return AU_NAMES if self.has_au else ()


AFFWILD2 = LabelSpace("affwild2", ABAW_EXPR, True, True, True, degenerate_pair=("Anger", "Fear"))
AFFECTNET = LabelSpace("affectnet", AFFECTNET_EXPR, True, True, False,
                       degenerate_pair=("Anger", "Contempt"))
RAFDB = LabelSpace("rafdb", AFFECTNET_EXPR, False, True, False,
                   f1_classes=tuple(sorted(RAFDB_TO_AFFECTNET.values())),
                   degenerate_pair=None)

LABEL_SPACES: dict[str, LabelSpace] = {s.name: s for s in (AFFWILD2, AFFECTNET, RAFDB)}
