"""Vendors, one folder each. A vendor package exports:

- ``VENDOR``: the ``Vendor`` with its declared operations (``operations.py``);
- ``Client``: its ``VendorClient`` subclass (``client.py``): login, auth, envelope;
- ``Simulator``: its ``SimulatorBase`` subclass (``simulator.py``): a real HTTP server, loaded
  lazily (a module ``__getattr__``) because its packages are the ``sim`` extra;
- ``FEEDS`` (optional): what the poller watches (``feeds.py``);
- ``NEUTRAL`` (optional): vendor-neutral commands mapped onto its operations (``neutral.py``);
- ``ACCOUNT_OPTIONS`` (optional): account options only this vendor reads, ``name -> (type, default)``.

Adding a vendor is adding a folder; nothing else in the tree names vendors.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbxbridge.config import Account
    from pbxbridge.vendors.client import VendorClient
    from pbxbridge.vendors.operation import Vendor


@cache
def vendor_names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


@cache
def load(name: str) -> ModuleType:
    if name not in vendor_names():
        raise KeyError(f"unknown vendor {name!r}; known: {', '.join(vendor_names())}")
    return importlib.import_module(f"{__name__}.{name}")


def get_vendor(name: str) -> "Vendor":
    return load(name).VENDOR


def all_vendors() -> list["Vendor"]:
    return [get_vendor(n) for n in vendor_names()]


def client_for(account: "Account", **kwargs: Any) -> "VendorClient":
    return load(account.vendor).Client(account, **kwargs)


def optional_module(vendor: str, name: str) -> ModuleType | None:
    """A vendor's optional part (``feeds``, ``neutral``, ``recordings``), or None if it has none."""
    try:
        return importlib.import_module(f"{__name__}.{vendor}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{vendor}.{name}":
            return None
        raise
