"""Local times repeated at a DST fall-back, settled from the records' order of arrival.

Vendors that stamp records in local time without an offset (Yemot in Israel, Fonema in
Spain) write the hour before a fall-back twice. Parsed with ``fold=0`` the second pass lands an
hour early, below the cursor's floor, and would vanish. Records come in arrival order, so a
repeated local time that would put a record well before one that arrived earlier belongs to
the second pass (``fold=1``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def is_repeated(when: datetime) -> bool:
    """A local time that happens twice (the hour before a fall-back)."""
    return when.utcoffset() != when.replace(fold=1 - when.fold).utcoffset()


class FoldSettler:
    """Epoch seconds of aware local times given one by one in arrival order. A repeated local
    time is read as its second occurrence when the first would put it more than ``slack``
    seconds before a record that arrived earlier; arrival order within ``slack`` is not
    trusted to mean time order."""

    def __init__(self, slack: float) -> None:
        self.slack = slack
        self.latest: float | None = None

    def __call__(self, when: datetime) -> float:
        stamp = when.timestamp()
        if self.latest is None:
            self.latest = stamp
        elif stamp < self.latest - self.slack and is_repeated(when):
            stamp = max(stamp, when.replace(fold=1).timestamp())
        self.latest = max(self.latest, stamp)
        return stamp


def settle_folds(times: Iterable[datetime], *, slack: float) -> list[float]:
    """``FoldSettler`` over a whole sequence."""
    settle = FoldSettler(slack)
    return [settle(when) for when in times]
