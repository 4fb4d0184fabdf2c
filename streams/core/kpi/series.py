"""The series of the KPI aggregator: leaf series and the series they roll up into.

A *leaf* series is what a lineage record carries: (site, algorithm, version, finding).
Values are emitted for *combos*: the leaf itself and its roll-ups over site ``*`` and
version ``*``, so every leaf updates 4 series (2 for KPIs that are not per version, and
for records without a version). Both get dense integer ids in order of first sight, so
``streams.core.kpi.aggregator`` keys its panes and emitted windows by small integers.
"""

from __future__ import annotations

from streams.core.kpi.catalogue import NO_VERSION, Dims

__all__ = ["SeriesIndex"]


class SeriesIndex:
    """Ids of leaf series and of the combos each one feeds.

    Attributes:
        leaf_combos: by leaf id, (the combos of versioned KPIs, the combos of the others).
        combo_dims: by combo id, the dimensions values are emitted with.
        combo_leaves: by combo id, the leaves merged into it.
    """

    def __init__(self) -> None:
        self._leaf_ids: dict[Dims, int] = {}
        self.leaf_combos: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._combo_ids: dict[Dims, int] = {}
        self.combo_dims: list[Dims] = []
        self.combo_leaves: list[list[int]] = []

    @property
    def leaves(self) -> list[Dims]:
        """The dimensions of every leaf, by id (ids are the order of first sight)."""
        return list(self._leaf_ids)

    def load(self, leaves: list[Dims]) -> None:
        """Registers stored leaves in their order, which gives every leaf and combo its id again.

        Raises:
            ValueError: the index already holds series, or a leaf is stored twice.
        """
        if self._leaf_ids:
            raise ValueError("series are loaded into an empty index only")
        for dims in leaves:
            if self.leaf(dims) != len(self.leaf_combos) - 1:
                raise ValueError(f"series {dims} is stored twice")

    def leaf(self, dims: Dims) -> int:
        """Returns the id of a leaf series; registers it and its combos on first sight."""
        leaf = self._leaf_ids.get(dims)
        if leaf is None:
            leaf = self._leaf_ids[dims] = len(self.leaf_combos)
            site, algorithm, version, finding = dims
            rolled = (
                self._combo((site, algorithm, "*", finding), leaf),
                self._combo(("*", algorithm, "*", finding), leaf),
            )
            if version == NO_VERSION:
                self.leaf_combos.append((rolled, rolled))
            else:
                versioned = (
                    self._combo(dims, leaf),
                    self._combo(("*", algorithm, version, finding), leaf),
                    *rolled,
                )
                self.leaf_combos.append((versioned, rolled))
        return leaf

    def _combo(self, dims: Dims, leaf: int) -> int:
        combo = self._combo_ids.get(dims)
        if combo is None:
            combo = self._combo_ids[dims] = len(self.combo_dims)
            self.combo_dims.append(dims)
            self.combo_leaves.append([])
        self.combo_leaves[combo].append(leaf)
        return combo
