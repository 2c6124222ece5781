"""The trial's circumplex, resolved once (docs/methods.md §4-§6): what it trains with and what it is scored under.

``resolve_circumplex`` is the one place that decides, for one trial, which circumplex it has — the
training split's own, or one imported from another dataset (``method.imported_from``, loaded by
``trainers.geometry.load_import_source``) — the cost it trains with (``trainers.costs.build_cost``)
and the TRUE circumplex its error structure is scored under. The engine calls it once and hands the
``TrialCircumplex`` to the method's OT term (``trainers.losses.ot.build_ot_term``), to evaluation
and to ``circumplex.json``; nothing downstream re-derives any of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainers.costs import build_cost, parse_cost
from trainers.geometry import CostChoice, Geometry, estimate_geometry, import_geometry, load_import_source

__all__ = ["TrialCircumplex", "resolve_circumplex"]


@dataclass(frozen=True, eq=False)
class TrialCircumplex:
    """Everything a trial knows about its circumplex, in its label space's class order.

    ``geometry``: the training split's own (labels after label noise; None without VA, e.g. RAF-DB).
    ``imported``: the ``method.imported_from`` geometry carried into this label order, loaded when the
    cost is ``imported`` or the dataset has no geometry of its own (else None). ``distributed``: the
    circumplex of the labels as distributed, before injected label noise (docs/methods.md §9; None without
    noise). ``choice``: the cost the trial trains with (``CostChoice``; ``choice.source`` is the
    circumplex of record: the own geometry, else the imported one). ``cost``: the ``method.cost``
    value it was built from (after the method's default).
    """

    geometry: Geometry | None
    imported: Geometry | None
    distributed: Geometry | None
    choice: CostChoice
    cost: Any = "none"

    @property
    def of_record(self) -> Geometry | None:
        """The circumplex the OT term was built from and whose centroids the consistency term uses:
        the dataset's own, else the imported one."""
        return self.geometry if self.geometry is not None else self.imported

    @property
    def truth(self) -> dict[str, np.ndarray] | None:
        """``{"cost", "centroids"}`` of the TRUE circumplex (docs/methods.md §6: always the dataset's own,
        whatever cost trained), from the labels as distributed; for a dataset without VA the imported
        geometry stands in (finite cost) — also for its ``cost: none`` condition, so every condition
        of a sweep is scored alike. None without any."""
        own = self.distributed if self.distributed is not None else self.geometry
        if own is not None:
            return {"cost": own.cost, "centroids": own.centroids}
        if self.imported is not None:
            return {"cost": self.imported.finite_cost, "centroids": self.imported.centroids}
        return None


def resolve_circumplex(label_space, train_index, seed: int, cost, imported_from: str | None = None, *,
                       geometry: Geometry | None = None, distributed: Geometry | None = None) -> TrialCircumplex:
    """The ``TrialCircumplex`` of one trial.

    ``train_index``: the training split (labels after label noise); ``geometry``: its circumplex when
    already estimated (else estimated here, seed 0, docs/methods.md §4). ``seed``: the TRIAL seed (the
    ``permuted`` derangement). ``cost``: a ``method.cost`` value (``trainers.costs``), ``"none"`` for a
    trial without an OT term. ``imported_from``: ``synthetic:<preset>`` or a ``circumplex.json`` path.
    ``distributed``: the circumplex of the labels before injected label noise. Raises ValueError when
    the cost cannot be built from what is available.
    """
    spec = parse_cost(cost, what="cost variant")
    imports = spec is not None and spec.source == "imported"
    if geometry is None and getattr(label_space, "has_va", False) and train_index is not None:
        geometry = estimate_geometry(train_index, label_space, seed=0)
    imported = None
    if imported_from is not None and (imports or geometry is None):
        imported = import_geometry(load_import_source(imported_from), label_space.class_names)
    elif imports:
        raise ValueError("cost 'imported' needs method.imported_from (e.g. 'synthetic:affectnet_like' or a "
                         "circumplex.json path)")
    choice = build_cost(cost, geometry, seed, imported=None if imported is None else imported.cost,
                        label_space=label_space, train_index=train_index)
    choice = dataclasses.replace(choice, source=geometry if geometry is not None else imported)
    return TrialCircumplex(geometry=geometry, imported=imported, distributed=distributed, choice=choice,
                           cost=cost)
