"""How pbxbridge connects to a NATS server that wants credentials and TLS, against real
nats-servers configured here: TLS with a CA made for the test, users with passwords, an NKey
user, a token behind mutual TLS, an operator-mode server for .creds files (JWTs signed here with
the ``nkeys`` package), and a cluster list whose first server is down.

Each connection is checked twice where it matters: with nats-py (``connect_nats``) and with
FastStream's ``NatsBroker``, both from the one ``nats_connection(settings)``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from faststream.nats import NatsBroker

from nats_processes import nats_server_process
from pbxbridge.bus import BusUnreachable, connect_nats, open_bus
from pbxbridge.bus.connection import NatsCredentialsError, nats_connection
from pbxbridge.bus.embedded import free_port
from pbxbridge.config import ConfigError, Settings, load_settings
from support import server_has_read


# ---------------------------------------------------------------------------------------------
# a CA, and certificates it issues (for 127.0.0.1), as PEM files


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(subject: str, key, issuer: x509.Name | None, issuer_key, *, ca: bool = False, usage=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _certificate("pbxbridge test CA", ca_key, None, ca_key, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=_write_cert(_certificate("nats", server_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH), d / "server.pem"),
        server_key=_write_key(server_key, d / "server-key.pem"),
        client_cert=_write_cert(_certificate("poller", client_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH), d / "client.pem"),
        client_key=_write_key(client_key, d / "client-key.pem"),
        other_ca=_write_cert(_certificate("someone else", other_key, None, other_key, ca=True), d / "other-ca.pem"),
    )


# ---------------------------------------------------------------------------------------------
# servers


@dataclass
class Secured:
    url: str
    dir: Path


def _secret_file(d: Path, name: str, value: str) -> Path:
    (d / name).write_text(value + "\n")  # a trailing newline, as `echo` and most editors leave
    return d / name


def _serve(d: Path, body: str) -> Iterator[Secured]:
    port = free_port()
    (d / "nats.conf").write_text(body)
    with nats_server_process(d / "nats.conf", port):
        yield Secured(f"nats://127.0.0.1:{port}", d)


def _tls_block(pki: Pki, *, verify: bool) -> str:
    return (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", ca_file: "{pki.ca}"'
        f'{", verify: true" if verify else ""} }}\n'
    )


USER_PASSWORD = "pw-" + secrets.token_urlsafe(16)
NKEY_SEED = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
TOKEN = "tok-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def tls_users(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Secured]:
    """TLS (server certificate only) and two users: one with a password, one with an NKey."""
    nkey_user = nkeys.from_seed(bytearray(NKEY_SEED.encode())).public_key.decode()
    yield from _serve(tmp_path_factory.mktemp("tls-users"), _tls_block(pki, verify=False) + (
        f'authorization {{ users: [ {{ user: "worker", password: "{USER_PASSWORD}" }}, {{ nkey: "{nkey_user}" }} ] }}\n'
    ))


@pytest.fixture(scope="module")
def mtls_token(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Secured]:
    """Mutual TLS (a client certificate from the CA is required) and a token."""
    yield from _serve(tmp_path_factory.mktemp("mtls-token"), _tls_block(pki, verify=True) + f'authorization {{ token: "{TOKEN}" }}\n')


# ---- operator mode: JWTs signed with nkeys, as nsc would make them --------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict) -> str:
    claims = {
        "jti": base64.b32encode(os.urandom(20)).decode().rstrip("="), "iat": int(time.time()),
        "iss": issuer.public_key.decode(), "name": name, "sub": subject, "nats": {**nats, "version": 2},
    }
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(issuer.sign(head.encode()))


def _keypair(prefix: int) -> tuple[nkeys.KeyPair, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed.decode()


def _creds(jwt: str, seed: str) -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )


@dataclass
class Operator(Secured):
    creds: Path
    user_seed: str


@pytest.fixture(scope="module")
def operator_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    d = tmp_path_factory.mktemp("operator")
    operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1}
    operator_jwt = _jwt(operator, operator.public_key.decode(), "test-operator", {"type": "operator"})
    account_jwt = _jwt(operator, account.public_key.decode(), "PBX", {
        "type": "account",
        "limits": {**unlimited, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1},
    })
    user_jwt = _jwt(account, user.public_key.decode(), "poller", {"type": "user", **unlimited})
    creds = _secret_file(d, "poller.creds", _creds(user_jwt, user_seed))
    body = (
        f'operator: "{operator_jwt}"\nresolver: MEMORY\n'
        f'resolver_preload: {{ {account.public_key.decode()}: "{account_jwt}" }}\n'
    )
    for server in _serve(d, body):
        yield Operator(server.url, server.dir, creds, user_seed)


# ---------------------------------------------------------------------------------------------


def _settings(url: str, **files) -> Settings:
    return Settings(_env_file=None, nats_url=url, **files)


async def _round_trip(settings: Settings) -> None:
    """nats-py and FastStream's broker, both from ``nats_connection``: the broker's publish
    reaches the nats-py subscriber, over the same authenticated (and encrypted) link kind."""
    connection = nats_connection(settings)
    nc = await connect_nats(connection, name="test", timeout=5)
    try:
        sub = await nc.subscribe("hello")
        await server_has_read(nc)
        broker = NatsBroker(**connection.broker_kwargs(), logger=None)
        async with asyncio.timeout(10), broker:  # a refused broker would retry for ever
            await broker.start()
            await broker.publish(b"from faststream", "hello")
        assert (await sub.next_msg(timeout=5)).data == b"from faststream"
        if connection.security is not None and connection.security.ssl_context is not None:
            assert nc._transport._io_writer.get_extra_info("ssl_object") is not None  # encrypted indeed
    finally:
        await nc.close()


async def _refused(settings: Settings) -> str:
    with pytest.raises(BusUnreachable) as info:
        await connect_nats(nats_connection(settings), name="test", timeout=2)
    return str(info.value)


async def test_password_file_over_tls(tls_users: Secured, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    password_file = _secret_file(tls_users.dir, "password", USER_PASSWORD)
    good = _settings(tls_users.url, nats_user="worker", nats_password_file=password_file, nats_tls_ca_file=pki.ca)
    await _round_trip(good)
    # The password, read from its file, is masked wherever it would be printed from now on.
    logging.getLogger("anyone").warning("connecting with %s", USER_PASSWORD)
    assert USER_PASSWORD not in caplog.text
    assert USER_PASSWORD not in repr(nats_connection(good)) + repr(good)
    # the server's certificate is checked against the CA given, not taken on trust
    message = await _refused(good.model_copy(update={"nats_tls_ca_file": pki.other_ca}))
    assert "CERTIFICATE_VERIFY_FAILED" in message or "certificate verify failed" in message
    # and the password is checked
    wrong = _secret_file(tls_users.dir, "wrong", "not-" + USER_PASSWORD)
    message = await _refused(good.model_copy(update={"nats_password_file": wrong}))
    assert "Authorization Violation" in message and "not-" not in message


async def test_nkey_seed_file(tls_users: Secured, pki: Pki) -> None:
    seed_file = _secret_file(tls_users.dir, "seed.nk", NKEY_SEED)
    settings = _settings(tls_users.url, nats_nkey_seed_file=seed_file, nats_tls_ca_file=pki.ca)
    await _round_trip(settings)
    assert NKEY_SEED not in repr(nats_connection(settings))
    # another seed (an unknown user) is refused
    other = _secret_file(tls_users.dir, "other.nk", nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())
    assert "Authorization Violation" in await _refused(settings.model_copy(update={"nats_nkey_seed_file": other}))


async def test_token_file_with_client_certificate(mtls_token: Secured, pki: Pki) -> None:
    token_file = _secret_file(mtls_token.dir, "token", TOKEN)
    settings = _settings(
        mtls_token.url, nats_token_file=token_file,
        nats_tls_ca_file=pki.ca, nats_tls_cert_file=pki.client_cert, nats_tls_key_file=pki.client_key,
    )
    await _round_trip(settings)
    # without the client certificate the server closes the TLS handshake
    await _refused(settings.model_copy(update={"nats_tls_cert_file": None, "nats_tls_key_file": None}))
    # with it, a wrong token is still refused
    wrong = _secret_file(mtls_token.dir, "wrong", "x" + TOKEN)
    message = await _refused(settings.model_copy(update={"nats_token_file": wrong}))
    assert "Authorization Violation" in message and TOKEN not in message


async def test_creds_file(operator_mode: Operator, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(operator_mode.url, nats_creds_file=operator_mode.creds)
    await _round_trip(settings)
    logging.getLogger("anyone").warning("seed %s", operator_mode.user_seed)
    assert operator_mode.user_seed not in caplog.text  # the seed inside the .creds file is masked
    # nothing else gets in: an operator-mode server takes signed users only
    assert "Authorization Violation" in await _refused(_settings(operator_mode.url))


async def test_a_cluster_list_whose_first_server_is_down(tmp_path: Path) -> None:
    """Both URLs given; the first answers nothing, the bus opens on the second (JetStream and all)."""
    dead = free_port()
    (tmp_path / "nats.conf").write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    port = free_port()
    with nats_server_process(tmp_path / "nats.conf", port):
        settings = load_settings({"PBX_NATS_URL": f"nats://127.0.0.1:{dead}, nats://127.0.0.1:{port}", "PBX_PREFIX": "cluster"})
        assert settings.nats_servers == [f"nats://127.0.0.1:{dead}", f"nats://127.0.0.1:{port}"]
        async with open_bus(settings, name="test") as bus:
            assert bus.nc.connected_url.port == port
            assert (await bus.js.stream_info(bus.names.events)).config.name == bus.names.events
            # FastStream's broker gets the whole list too
            assert bus.broker_kwargs()["servers"] == settings.nats_servers


# ---- the settings: one way to authenticate, complete, files only; errors name files, never contents


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PBX_NATS_USER": "poller"}, "PBX_NATS_USER and PBX_NATS_PASSWORD_FILE go together"),
        ({"PBX_NATS_TOKEN_FILE": "/t", "PBX_NATS_NKEY_SEED_FILE": "/s"}, "choose one way to authenticate"),
        ({"PBX_NATS_TLS_CERT_FILE": "/c"}, "PBX_NATS_TLS_CERT_FILE and PBX_NATS_TLS_KEY_FILE go together"),
        ({"PBX_NATS_URL": "nats://u:secret-pw@h:4222", "PBX_NATS_TOKEN_FILE": "/t"}, "PBX_NATS_URL holds credentials"),
        ({"PBX_NATS_URL": "", "PBX_NATS_TOKEN_FILE": "/t"}, "need PBX_NATS_URL"),
        ({"PBX_NATS_URL": "nats://a:4222,http://b"}, "comma-separated list"),
    ],
)
def test_incomplete_or_conflicting_settings_are_refused(env: dict[str, str], message: str) -> None:
    env = {"PBX_NATS_URL": "nats://nats:4222", **env}
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env)
    assert "secret-pw" not in str(info.value)


def test_an_unreadable_secret_file_is_named_not_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(NatsCredentialsError, match=f"PBX_NATS_PASSWORD_FILE: cannot read {missing}"):
        nats_connection(_settings("nats://nats:4222", nats_user="u", nats_password_file=missing))
    not_creds = _secret_file(tmp_path, "x.creds", "hunter2-is-not-a-creds-file")
    with pytest.raises(NatsCredentialsError, match="is not a NATS .creds file") as info:
        nats_connection(_settings("nats://nats:4222", nats_creds_file=not_creds))
    assert "hunter2" not in str(info.value)
    key_not_cert = _secret_file(tmp_path, "cert.pem", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----")
    with pytest.raises(NatsCredentialsError, match=f"cannot use {key_not_cert}") as info:
        nats_connection(_settings("nats://nats:4222", nats_tls_cert_file=key_not_cert, nats_tls_key_file=key_not_cert))
    assert "c2VjcmV0" not in str(info.value)


async def test_verify_mode_names_what_is_missing(tmp_path: Path) -> None:
    """On a server where nothing was provisioned, PBX_PROVISION=verify creates nothing and says what is missing."""
    from pbxbridge.bus import NotProvisioned

    (tmp_path / "nats.conf").write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    port = free_port()
    with nats_server_process(tmp_path / "nats.conf", port):
        settings = load_settings({"PBX_NATS_URL": f"nats://127.0.0.1:{port}", "PBX_PREFIX": "unprovisioned", "PBX_PROVISION": "verify"})
        with pytest.raises(NotProvisioned) as info:
            async with open_bus(settings, name="test"):
                pass
        message = str(info.value)
        assert "stream UNPROVISIONED_EVENTS" in message and "KV bucket unprovisioned_ledger" in message
        assert "object store unprovisioned_recordings" in message and message.endswith("run `pbxbridge provision` (as the NATS admin user) first")
        nc = await connect_nats(f"nats://127.0.0.1:{port}", timeout=5)
        try:
            assert [name async for name in _stream_names(nc)] == []  # it created nothing
        finally:
            await nc.close()


async def _stream_names(nc):
    for name in await nc.jetstream().streams_info():
        yield name.config.name


async def test_provision_says_in_one_line_what_stops_it(tmp_path: Path) -> None:
    """No cluster to provision, or an unreadable password file: exit 2, one line, no traceback."""
    from nats_processes import pbx_env, pbxbridge

    no_url = await pbxbridge("provision", env=pbx_env())
    assert no_url.returncode == 2 and no_url.stderr.strip().startswith("PBX_NATS_URL is not set"), no_url.stderr
    missing = tmp_path / "admin_password"
    env = pbx_env(PBX_NATS_URL="nats://127.0.0.1:1", PBX_NATS_USER="admin", PBX_NATS_PASSWORD_FILE=str(missing))
    unreadable = await pbxbridge("provision", env=env)
    assert unreadable.returncode == 2
    assert unreadable.stderr.strip() == f"PBX_NATS_PASSWORD_FILE: cannot read {missing}: No such file or directory"
