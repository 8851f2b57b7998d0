"""How pbxbridge connects to NATS: the servers, the credentials and TLS, from ``Settings``.

``nats_connection(settings)`` is the one place that reads the secret files and builds the TLS
context. Its result feeds both nats-py (``nats.connect(**c.nats_kwargs())``) and FastStream
(``NatsBroker(**c.broker_kwargs())``): FastStream takes the credentials as a ``security`` object
and turns it into nats-py's keyword arguments with ``parse_security``, which is exactly how
``nats_kwargs`` is made here, so the two connections can never authenticate differently.

Every secret read is registered with ``pbxbridge.redact`` before anything can print it; an error
names the variable and the file, never the file's content.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream.nats.security import NatsCredentials, NatsNKey, NatsSecurity, NatsToken, NatsUserPassword, parse_security

from pbxbridge.config import ConfigError, Settings, masked_url
from pbxbridge.redact import register_secrets

# The seed block of a .creds file (the JWT beside it is signed, not secret).
_CREDS_SEED = "-----BEGIN USER NKEY SEED-----"
_CREDS_JWT = "-----BEGIN NATS USER JWT-----"

# Every connection, nats-py's and FastStream's, reconnects for ever and soon: FastStream's own
# default (60 attempts 2 s apart) would leave a worker's consumer closed for good after a
# two-minute outage while its bus connection came back.
RECONNECT = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}


class NatsCredentialsError(ConfigError):
    """A credential or TLS file cannot be used; the message names the variable and the file."""


@dataclass(frozen=True)
class NatsConnection:
    """Where and how to connect; ``repr`` shows the servers masked and the kind of credentials only."""

    servers: list[str]
    security: NatsSecurity | None = field(default=None)

    def nats_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` / ``Client.connect``."""
        return {"servers": list(self.servers), **parse_security(self.security), **RECONNECT}

    def broker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for FastStream's ``NatsBroker``."""
        return {"servers": list(self.servers), "security": self.security, **RECONNECT}

    def __repr__(self) -> str:
        kind = type(self.security).__name__ if self.security is not None else "none"
        tls = bool(self.security is not None and self.security.ssl_context is not None)
        return f"NatsConnection(servers={masked_url(','.join(self.servers))!r}, auth={kind}, tls={tls})"


def _read(path: Path, variable: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise NatsCredentialsError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise NatsCredentialsError(f"{variable}: {path} is not a text file") from None
    if not text:
        raise NatsCredentialsError(f"{variable}: {path} is empty")
    return text


def _secret(path: Path, variable: str) -> str:
    value = _read(path, variable)
    register_secrets([value])
    return value


def _checked_creds_file(path: Path) -> str:
    """nats-py reads the .creds file itself, at every (re)connection, so a rotated file is picked up;
    here it is only checked once, to fail at start-up with the file's name, and its seed masked."""
    text = _read(path, "PBX_NATS_CREDS_FILE")
    if _CREDS_JWT not in text or _CREDS_SEED not in text:
        raise NatsCredentialsError(
            f"PBX_NATS_CREDS_FILE: {path} is not a NATS .creds file (it needs a user JWT and an NKey seed block)"
        )
    register_secrets(line.strip() for line in text.splitlines() if line.strip().startswith("SU"))
    return str(path)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return None
    try:
        # With no CA file the system's trust store checks the servers (a public CA).
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise NatsCredentialsError(
            f"PBX_NATS_TLS_CA_FILE: cannot use {settings.nats_tls_ca_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if settings.nats_tls_cert_file:
        try:
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            # ssl's messages describe the PEM's structure, never the key's bytes.
            raise NatsCredentialsError(
                f"PBX_NATS_TLS_CERT_FILE/PBX_NATS_TLS_KEY_FILE: cannot use {settings.nats_tls_cert_file} "
                f"with {settings.nats_tls_key_file}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    return context


def nats_connection(settings: Settings, *, servers: list[str] | None = None) -> NatsConnection:
    """The servers (``servers``, else ``PBX_NATS_URL``'s list) and the credentials/TLS the settings name."""
    tls = _tls_context(settings)
    common: dict[str, Any] = {"ssl_context": tls, "use_ssl": tls is not None}
    security: NatsSecurity | None
    if settings.nats_creds_file:
        security = NatsCredentials(_checked_creds_file(settings.nats_creds_file), **common)
    elif settings.nats_nkey_seed_file:
        security = NatsNKey.from_seed(_secret(settings.nats_nkey_seed_file, "PBX_NATS_NKEY_SEED_FILE"), **common)
    elif settings.nats_user and settings.nats_password_file:
        security = NatsUserPassword(settings.nats_user, _secret(settings.nats_password_file, "PBX_NATS_PASSWORD_FILE"), **common)
    elif settings.nats_token_file:
        security = NatsToken(_secret(settings.nats_token_file, "PBX_NATS_TOKEN_FILE"), **common)
    else:  # none, or inline in the URL (masked by Settings): TLS alone, if any
        security = NatsSecurity(**common) if tls is not None else None
    return NatsConnection(servers if servers is not None else settings.nats_servers, security)
