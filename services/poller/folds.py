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


def settle_folds(times: Iterable[datetime], *, slack: float) -> list[float]:
    """Epoch seconds of ``times`` (aware, in arrival order). A repeated local time is read as its
    second occurrence when the first would put it more than ``slack`` seconds before a record
    that arrived earlier; arrival order within ``slack`` is not trusted to mean time order."""
    out: list[float] = []
    latest: float | None = None
    for when in times:
        stamp = when.timestamp()
        if latest is not None and stamp < latest - slack and is_repeated(when):
            stamp = max(stamp, when.replace(fold=1).timestamp())
        out.append(stamp)
        latest = stamp if latest is None else max(latest, stamp)
    return out
