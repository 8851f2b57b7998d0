"""Configuration: accounts from one TOML file, settings from the environment, secrets from neither.

A credential in the config file is a *reference*: ``{env = "NAME"}`` or ``{file = "/run/secrets/x"}``.
A literal secret in the file is refused, so a config file can be committed and shared.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


class CredentialRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "CredentialRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self, environ: dict[str, str]) -> SecretStr:
        if self.env is not None:
            if self.env not in environ:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(environ[self.env])
        try:
            return SecretStr(self.file.read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from None


class AccountOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    phone_region: str = Field("US", description="default region for numbers without a country code")
    timeout: float = Field(10.0, gt=0, description="seconds per vendor HTTP call")
    rate_per_second: float = Field(10.0, gt=0, description="vendor calls per second, per account")
    max_concurrency: int = Field(4, ge=1, description="vendor calls in flight, per account")
    max_reply_bytes: int = Field(16 * 2**20, ge=1024, description="largest vendor reply read, after decompression")
    max_download_bytes: int = Field(2**30, ge=1024, description="largest recording file fetched")
    poll_interval: float = Field(5.0, gt=0, description="seconds between polls of one feed")
    feeds: list[str] | None = Field(None, description="feeds to poll; default: all the vendor has")


class AccountConfig(BaseModel):
    """An account as written in the config file."""

    model_config = ConfigDict(extra="forbid")
    vendor: str
    id: Annotated[str, Field(pattern=SLUG)]
    base_url: str
    username: str | None = None
    credentials: dict[str, CredentialRef] = {}
    options: AccountOptions = AccountOptions()

    @field_validator("vendor")
    @classmethod
    def _known_vendor(cls, v: str) -> str:
        from pbxbridge.vendors import vendor_names

        if v not in vendor_names():
            raise ValueError(f"unknown vendor {v!r}; known: {', '.join(vendor_names())}")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v if v.endswith("/") else v + "/"

    @field_validator("credentials", mode="before")
    @classmethod
    def _no_literal_secrets(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, ref in v.items():
                if isinstance(ref, str):
                    raise ValueError(
                        f"{name}: secrets never go in the config file; use {{env = \"VAR\"}} or {{file = \"path\"}}"
                    )
        return v


class Account(BaseModel):
    """A usable account: credentials resolved, never printed."""

    model_config = ConfigDict(frozen=True)
    vendor: str
    id: str
    base_url: str
    username: str | None = None
    credentials: dict[str, SecretStr] = {}
    options: AccountOptions = AccountOptions()

    def secret(self, name: str) -> str | None:
        value = self.credentials.get(name)
        return value.get_secret_value() if value is not None else None

    @property
    def key(self) -> str:
        return f"{self.vendor}.{self.id}"


class ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accounts: list[AccountConfig] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> "ConfigFile":
        seen = set()
        for a in self.accounts:
            if (a.vendor, a.id) in seen:
                raise ValueError(f"account {a.vendor}/{a.id} is declared twice")
            seen.add((a.vendor, a.id))
        return self


class Settings(BaseSettings):
    """Deployment settings, from ``PBX_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PBX_", extra="ignore")
    nats_url: str | None = Field(None, description="join this NATS cluster; unset: start an embedded nats-server")
    embedded_port: int = Field(4222, ge=0, description="embedded nats-server port; a free one if taken")
    prefix: str = Field("pbx", pattern=r"^[A-Za-z0-9_-]+$")
    config: Path | None = Field(None, description="accounts file (TOML)")
    data_dir: Path = Field(Path(".pbxbridge"), description="embedded NATS storage, local scratch")
    replicas: int = Field(1, ge=1, le=5)
    events_max_age: float = Field(7 * 86400, gt=0, description="seconds events are kept")
    results_max_age: float = Field(7 * 86400, gt=0)
    duplicate_window: float = Field(120, gt=0, description="JetStream dedupe window, seconds")
    lease_ttl: float = Field(15, gt=0, description="seconds a poller replica holds a feed")
    recording_format: str = Field("opus", description="archive codec: opus, mp3, flac, wav")
    recording_max_wait: float = Field(3600, gt=0, description="seconds to keep asking for a recording still processing")
    recording_max_deliver: int = Field(
        200, ge=2, description="deliveries of one recording job (room for recording_max_wait) before it ends failed"
    )
    recording_ack_wait: float = Field(
        60, gt=0, description="seconds a recordings worker may go silent before its job is handed to another"
    )
    recording_claim_ttl: float = Field(
        30, gt=0, description="seconds an archive name stays claimed by a worker that stopped renewing it"
    )
    command_max_deliver: int = Field(6, ge=1, description="vendor attempts per command before it fails")
    command_backoff: float = Field(1.0, gt=0, description="first retry delay, seconds; doubles per attempt")
    command_backoff_max: float = Field(60.0, gt=0, description="longest retry delay, seconds")
    command_concurrency: int = Field(16, ge=1, description="commands in flight per commander replica")
    command_ack_wait: float = Field(30.0, gt=0, description="seconds JetStream waits for a sign of life before redelivering")
    command_claim_ttl: float = Field(30.0, gt=0, description="seconds a command's claim lives unless its owner renews it")
    command_busy_delay: float = Field(0.5, gt=0, description="seconds before a command for a busy account is offered again")
    command_max_deliveries: int = Field(1000, ge=2, description="deliveries of one message (waits included); the last concludes")
    instance: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")


class Config(BaseModel):
    settings: Settings
    accounts: list[Account]

    def account(self, vendor: str, account_id: str) -> Account:
        for a in self.accounts:
            if a.vendor == vendor and a.id == account_id:
                return a
        raise KeyError(f"no account {vendor}/{account_id}")


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    lines = [f"{source}: invalid configuration" if source else "invalid configuration"]
    for err in exc.errors():
        lines.append(f"  {_field_path(err['loc'])}: {err['msg']}")
    return "\n".join(lines)


def resolve_accounts(file: ConfigFile, environ: dict[str, str]) -> list[Account]:
    accounts = []
    for i, a in enumerate(file.accounts):
        creds = {}
        for name, ref in a.credentials.items():
            try:
                creds[name] = ref.resolve(environ)
            except ValueError as exc:
                raise ConfigError(f"accounts[{i}].credentials.{name}: {exc}") from None
        accounts.append(
            Account(vendor=a.vendor, id=a.id, base_url=a.base_url, username=a.username, credentials=creds, options=a.options)
        )
    return accounts


def parse_config(data: dict[str, Any], *, settings: Settings, environ: dict[str, str] | None = None, source: str = "") -> Config:
    try:
        file = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    return Config(settings=settings, accounts=resolve_accounts(file, dict(os.environ) if environ is None else environ))


def load_config(path: Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """Settings from the environment, accounts from ``path`` (or ``PBX_CONFIG``)."""
    env = dict(os.environ) if environ is None else environ
    try:
        settings = Settings(_env_file=None, **({} if environ is None else _settings_from(env)))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "environment (PBX_*)")) from None
    path = path or settings.config
    if path is None:
        return Config(settings=settings, accounts=[])
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, settings=settings, environ=env, source=str(path))


def _settings_from(env: dict[str, str]) -> dict[str, str]:
    return {k[4:].lower(): v for k, v in env.items() if k.startswith("PBX_") and k[4:].lower() in Settings.model_fields}
