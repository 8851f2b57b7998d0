"""Configuration: accounts from TOML, secrets only by reference, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbxbridge.config import ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "pbxbridge.toml"


def test_example_config_loads_with_its_secrets(tmp_path: Path) -> None:
    """The committed example is valid; secrets come from the env and files it names."""
    secret_file = tmp_path / "fonema_password"
    secret_file.write_text("s3cret-file\n")
    text = EXAMPLE.read_text().replace("/run/secrets/fonema_password", str(secret_file))
    path = tmp_path / "c.toml"
    path.write_text(text)
    env = {"PBX_ACME_YEMOT_PASSWORD": "pw1", "PBX_SUPPORT_UCONTACT_PASSWORD": "pw2", "PBX_HQ_SWAN_KEY": "k3"}
    cfg = load_config(path, environ=env)
    assert [a.key for a in cfg.accounts] == ["yemot.acme", "fonema.madrid", "ucontact.support", "swan.hq"]
    assert cfg.account("fonema", "madrid").secret("password") == "s3cret-file"
    assert "pw1" not in repr(cfg) and "s3cret" not in repr(cfg)


def _load(tmp_path: Path, text: str, env: dict | None = None):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, environ=env or {})


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    """A password written into the file stops start-up and says where."""
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.credentials.*secrets never go in the config file"):
        _load(tmp_path, '[[accounts]]\nvendor="yemot"\nid="a"\nbase_url="http://x/"\ncredentials={password="hunter2"}\n')


def test_bad_fields_are_named(tmp_path: Path) -> None:
    """Unknown vendor, bad slug and bad URL are each reported with their field path."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, '[[accounts]]\nvendor="acme-pbx"\nid="Bad Id"\nbase_url="ftp://x"\n')
    text = str(info.value)
    assert "accounts[0].vendor" in text and "accounts[0].id" in text and "accounts[0].base_url" in text


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    """A credential whose variable is unset names the account field and the variable."""
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.credentials\.password: environment variable NOPE is not set"):
        _load(tmp_path, '[[accounts]]\nvendor="yemot"\nid="a"\nbase_url="http://x/"\ncredentials={password={env="NOPE"}}\n')


def test_bad_setting_in_environment_is_named(tmp_path: Path) -> None:
    """A malformed PBX_* variable stops start-up naming the setting."""
    with pytest.raises(ConfigError, match="PBX_REPLICAS"):
        load_config(None, environ={"PBX_REPLICAS": "many"})


def test_not_toml_is_reported(tmp_path: Path) -> None:
    """A file that is not TOML says so, with its path."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "this is = = not toml")
