"""Configuration: accounts from one TOML file, settings from the environment, secrets from neither.

A credential in the config file is a *reference*: ``{env = "NAME"}`` or ``{file = "/run/secrets/x"}``.
A literal secret in the file is refused, so a config file can be committed and shared.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pbxbridge.redact import MASK, register_secrets

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"

# The archive codecs services/recordings/convert.py can write (a test keeps the two in step).
RecordingFormat = Literal["opus", "mp3", "flac", "wav"]
RECORDING_FORMATS: tuple[str, ...] = get_args(RecordingFormat)
RecordingArchive = Literal["object-store", "s3"]

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@")


def masked_url(url: str) -> str:
    """``url`` fit to print: the password (or token) in its user info replaced by ``***``.

    Covers every URL in the text, so a comma-separated server list is masked too."""

    def mask(match: re.Match[str]) -> str:
        user, has_password, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{MASK}@" if has_password else f"{match['scheme']}{MASK}@"

    return _URL_USERINFO.sub(mask, url)


def url_secrets(url: str) -> list[str]:
    """The secrets in ``url``'s user info: the password of ``user:password@``, or a bare token."""
    secrets = []
    for match in _URL_USERINFO.finditer(url):
        user, has_password, password = match["userinfo"].partition(":")
        secrets.append(password if has_password else user)
    return [s for s in secrets if s]


def split_servers(urls: str) -> list[str]:
    """``nats://a:4222, nats://b:4222`` -> the URLs, blanks dropped."""
    return [u.strip() for u in urls.split(",") if u.strip()]


def _require_http(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


HttpUrlText = Annotated[str, AfterValidator(_require_http)]
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


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
    """Options every account has. A vendor's own options (see ``vendor_option_fields``) are kept
    as extras, which its code reads from ``model_extra``; the config file refuses any other name."""

    model_config = ConfigDict(extra="allow")
    phone_region: str = Field("US", description="default region for numbers without a country code")
    timeout: float = Field(10.0, gt=0, description="seconds per vendor HTTP call")
    rate_per_second: float = Field(10.0, gt=0, description="vendor calls per second, per account")
    max_concurrency: int = Field(4, ge=1, description="vendor calls in flight, per account")
    # Room for a feed's largest page (200,000 log rows are ~23 MB) while still stopping a gzip bomb.
    max_reply_bytes: int = Field(64 * 2**20, ge=1024, description="largest vendor reply read, after decompression")
    max_download_bytes: int = Field(2**30, ge=1024, description="largest recording file fetched")
    poll_interval: float = Field(5.0, gt=0, description="seconds between polls of one feed")
    feeds: list[str] | None = Field(None, description="feeds to poll; default: all the vendor has")
    feed_intervals: dict[str, Annotated[float, Field(gt=0)]] | None = Field(
        None, description="seconds between polls per feed (by feed or event name); default: the feed's own, else poll_interval",
    )
    archive_recordings: bool = Field(False, description="archive every call.ended/voicemail.received recording, unasked")
    archive: RecordingArchive | None = Field(None, description="where this account's recordings go; default: recording_archive")

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, v: str) -> str:
        region = v.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {v!r}; use a two-letter ISO code such as US, IL, ES, UY")
        return region


# A vendor's own account options, as ``name: (type, default)`` for ``pydantic.create_model``.
def vendor_option_fields(vendor: str) -> dict[str, tuple[Any, Any]]:
    """The options ``vendor`` accepts beyond the common ``AccountOptions``."""
    from pbxbridge.vendors import load

    # Declared by the vendor package as ``ACCOUNT_OPTIONS``: name -> (type, default).
    return dict(getattr(load(vendor), "ACCOUNT_OPTIONS", {}))


def _feed_names(vendor: str) -> set[str]:
    from pbxbridge.feeds import known_names

    return known_names(vendor)


class _StrictOptions(AccountOptions):
    model_config = ConfigDict(extra="forbid")


@cache
def vendor_options_model(vendor: str) -> type[AccountOptions]:
    """The options an account of ``vendor`` may set, every one checked, no other name allowed."""
    known_feeds = _feed_names(vendor)

    def known_feeds_only(names: Any) -> Any:  # a list of names, or a mapping keyed by them
        unknown = sorted(set(names or ()) - known_feeds)
        if unknown:
            raise ValueError(
                f"no such feed(s) {', '.join(unknown)}; {vendor} has: {', '.join(sorted(known_feeds)) or 'none'}"
            )
        return names

    return create_model(
        f"{vendor.title()}Options",
        __base__=_StrictOptions,
        __validators__={"_known_feeds": field_validator("feeds", "feed_intervals")(known_feeds_only)},
        **vendor_option_fields(vendor),
    )


def _refuse_unknown_options(model: type[BaseModel], options: dict[str, Any]) -> None:
    unknown = [name for name in options if name not in model.model_fields]
    if unknown:
        known = ", ".join(model.model_fields)
        raise ValidationError.from_exception_data(
            model.__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError("unknown_option", "unknown option; known: {known}", {"known": known}),
                    loc=(name,),
                    input=options[name],
                )
                for name in unknown
            ],
        )


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
        _require_http(v)
        return v if v.endswith("/") else v + "/"

    @field_validator("options", mode="before")
    @classmethod
    def _vendor_options(cls, v: Any, info: ValidationInfo) -> Any:
        vendor = info.data.get("vendor")
        if vendor is None or not isinstance(v, dict):  # an unknown vendor is reported on its own field
            return v
        model = vendor_options_model(vendor)
        _refuse_unknown_options(model, v)
        # Back to the common model: vendor code reads its own options from ``model_extra``.
        return AccountOptions.model_validate(model.model_validate(v).model_dump(exclude_unset=True))

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

    # hide_input_in_errors: a rejected PBX_NATS_URL may hold a password.
    model_config = SettingsConfigDict(env_prefix="PBX_", extra="ignore", hide_input_in_errors=True)
    nats_url: str | None = Field(
        None, description="join this NATS cluster (one URL, or a comma-separated list); unset: start an embedded nats-server",
    )
    # The connection's credentials and TLS come from files only (Docker/Kubernetes secrets), never
    # from a variable's value: see pbxbridge/bus/connection.py, which reads them.
    nats_creds_file: Path | None = Field(None, description=".creds file: user JWT + NKey seed")
    nats_nkey_seed_file: Path | None = Field(None, description="file holding an NKey user seed")
    nats_user: str | None = Field(None, description="user name; its password in PBX_NATS_PASSWORD_FILE")
    nats_password_file: Path | None = Field(None, description="file holding PBX_NATS_USER's password")
    nats_token_file: Path | None = Field(None, description="file holding an authentication token")
    nats_tls_ca_file: Path | None = Field(None, description="CA bundle (PEM) the servers' certificates are checked with")
    nats_tls_cert_file: Path | None = Field(None, description="client certificate (PEM), with PBX_NATS_TLS_KEY_FILE")
    nats_tls_key_file: Path | None = Field(None, description="client certificate's private key (PEM)")
    provision: Literal["create", "verify"] = Field(
        "create",
        description="create: streams and buckets are created/updated at start-up (embedded/dev); "
        "verify: only checked, `pbxbridge provision` creates them",
    )
    embedded_port: int = Field(4222, ge=0, description="embedded nats-server port; a free one if taken")
    prefix: str = Field("pbx", pattern=r"^[A-Za-z0-9_-]+$")
    config: Path | None = Field(None, description="accounts file (TOML)")
    data_dir: Path = Field(Path(".pbxbridge"), description="embedded NATS storage, local scratch")
    replicas: int = Field(1, ge=1, le=5)
    events_max_age: float = Field(7 * 86400, gt=0, description="seconds events are kept")
    results_max_age: float = Field(7 * 86400, gt=0)
    duplicate_window: float = Field(120, gt=0, description="JetStream dedupe window, seconds")
    lease_ttl: float = Field(15, gt=0, description="seconds a poller replica holds a feed")
    recording_format: RecordingFormat = Field("opus", description="archive codec: " + ", ".join(RECORDING_FORMATS))
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
    recording_archive: RecordingArchive = Field("object-store", description="default archive: the bus's Object Store, or S3")
    recording_s3_endpoint: str | None = Field(None, description="S3-compatible endpoint URL; unset: AWS for the region")
    recording_s3_bucket: str | None = Field(None, description="S3 bucket for archives")
    recording_s3_region: str = Field("us-east-1", description="S3 region")
    recording_s3_access_key_id: SecretStr | None = Field(None, description="unset: the AWS default credential chain")
    recording_s3_secret_access_key: SecretStr | None = None
    recording_s3_access_key_id_file: Path | None = Field(None, description="a secret file holding the access key id")
    recording_s3_secret_access_key_file: Path | None = Field(None, description="a secret file holding the secret key")
    recording_s3_part_size: int = Field(8 * 2**20, ge=5 * 2**20, description="multipart upload part size, bytes")
    command_max_deliver: int = Field(6, ge=1, description="vendor attempts per command before it fails")
    command_backoff: float = Field(1.0, gt=0, description="first retry delay, seconds; doubles per attempt")
    command_backoff_max: float = Field(60.0, gt=0, description="longest retry delay, seconds")
    command_concurrency: int = Field(16, ge=1, description="commands in flight per commander replica")
    command_ack_wait: float = Field(30.0, gt=0, description="seconds JetStream waits for a sign of life before redelivering")
    command_claim_ttl: float = Field(30.0, gt=0, description="seconds a command's claim lives unless its owner renews it")
    command_busy_delay: float = Field(0.5, gt=0, description="seconds before a command for a busy account is offered again")
    command_max_deliveries: int = Field(1000, ge=2, description="deliveries of one message (waits included); the last concludes")
    instance: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    # Running in production (pbxbridge.health, pbxbridge.logs, pbxbridge.metrics).
    health_port: int = Field(9464, ge=0, le=65535, description="/healthz, /readyz and /metrics; 0: a free port, logged")
    log_format: Literal["text", "json"] = Field("text", description="json: one object a line, with trace and span ids")
    consumer_sample_interval: float = Field(15.0, gt=0, description="seconds between samples of JetStream consumers' pending counts")

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():  # PBX_NATS_URL= (empty) means unset, as it always has
            return None
        v = v.strip()
        # Registered before any check: whoever prints it from now on (nats-py, FastStream, an
        # exception) logs it masked.
        register_secrets(url_secrets(v))
        servers = split_servers(v)
        for server in servers:
            parts = urlsplit(server)
            try:
                port_ok = parts.port is None or parts.port > 0
            except ValueError:
                port_ok = False
            if parts.scheme not in NATS_SCHEMES or not parts.hostname or not port_ok:
                raise ValueError(
                    f"must look like nats://host:4222, or a comma-separated list of such URLs (schemes: {', '.join(NATS_SCHEMES)})"
                )
        return ",".join(servers)

    @model_validator(mode="after")
    def _nats_auth(self) -> "Settings":
        """One way to authenticate, each part complete, and only against a server we are given."""
        ways = [
            name for name, given in (
                ("PBX_NATS_CREDS_FILE", self.nats_creds_file), ("PBX_NATS_NKEY_SEED_FILE", self.nats_nkey_seed_file),
                ("PBX_NATS_USER", self.nats_user or self.nats_password_file), ("PBX_NATS_TOKEN_FILE", self.nats_token_file),
            ) if given
        ]
        if len(ways) > 1:
            raise ValueError(f"choose one way to authenticate to NATS, not {' and '.join(ways)}")
        if bool(self.nats_user) != bool(self.nats_password_file):
            raise ValueError("PBX_NATS_USER and PBX_NATS_PASSWORD_FILE go together")
        if bool(self.nats_tls_cert_file) != bool(self.nats_tls_key_file):
            raise ValueError("PBX_NATS_TLS_CERT_FILE and PBX_NATS_TLS_KEY_FILE go together")
        if self.nats_url is None and (ways or self.nats_tls_ca_file or self.nats_tls_cert_file):
            raise ValueError("NATS credentials and TLS files need PBX_NATS_URL (the embedded server has neither)")
        if ways and url_secrets(self.nats_url or ""):
            raise ValueError(f"PBX_NATS_URL holds credentials and {ways[0]} gives others: keep one")
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The cluster's server URLs, in the order given (nats-py shuffles them unless told not to)."""
        return split_servers(self.nats_url) if self.nats_url else []

    @property
    def display_nats_url(self) -> str | None:
        return masked_url(self.nats_url) if self.nats_url else None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (self.display_nats_url if name == "nats_url" else value)


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


def format_validation_error(exc: ValidationError, source: str = "", *, env_prefix: str | None = None) -> str:
    """Each error on its own line with its field path; a single error on one line.

    With ``env_prefix`` the fields are named as their environment variables (``PBX_NATS_URL``)."""
    problems = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
        if not err["loc"]:  # a check across fields: its message names them
            problems.append(message)
            continue
        where = f"{env_prefix}{str(err['loc'][0]).upper()}" if env_prefix is not None else _field_path(err["loc"])
        problems.append(f"{where}: {message}")
    head = f"{source}: invalid configuration" if source else "invalid configuration"
    if len(problems) == 1:
        return f"{head}: {problems[0]}"
    return "\n".join([head, *(f"  {p}" for p in problems)])


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


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``PBX_*`` variables (``environ``, default the process's); ``ConfigError`` names the bad one."""
    try:
        return Settings(_env_file=None, **({} if environ is None else _settings_from(environ)))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "environment", env_prefix="PBX_")) from None


def load_config(path: Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """Settings from the environment, accounts from ``path`` (or ``PBX_CONFIG``)."""
    env = dict(os.environ) if environ is None else environ
    settings = load_settings(environ)
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
