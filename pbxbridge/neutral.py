"""The contract between the commander and a vendor's ``neutral.py``.

Vendor-neutral commands (``call.originate``, ``agent.status.set``...) are defined in
``pbxbridge.commands``. A vendor maps the ones it can onto its own declared operations in
``pbxbridge/vendors/<vendor>/neutral.py``::

    NEUTRAL: dict[str, Callable[[<NeutralCommand subclass>], VendorCall]]

keyed by the neutral command's name. A command a vendor does not map ends ``unsupported``; a
command the vendor cannot carry out with these parameters raises ``NotApplicable`` and ends
``rejected`` with its message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VendorCall:
    """One declared operation and its parameters."""

    operation: str
    params: dict[str, Any] = field(default_factory=dict)


class NotApplicable(ValueError):
    """The vendor maps this command, but not with these parameters (e.g. Yemot needs a queue)."""
