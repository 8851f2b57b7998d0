"""Configuration: accounts from TOML, secrets only by reference, errors that name the field."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pbxbridge.config import RECORDING_FORMATS, Config, ConfigError, Settings, load_config, load_settings

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "pbxbridge.toml"
VENDORS = ROOT / "pbxbridge" / "vendors"


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


def _account(options: str, vendor: str = "yemot") -> str:
    return f'[[accounts]]\nvendor="{vendor}"\nid="a"\nbase_url="http://x/"\noptions={{ {options} }}\n'


def test_misspelt_account_option_is_refused_by_name(tmp_path: Path) -> None:
    """An option no part of pbxbridge reads (a typo) stops start-up naming it and the known ones."""
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.options\.poll_intervall: unknown option; known: .*poll_interval"):
        _load(tmp_path, _account("poll_intervall = 3"))


def test_vendor_options_belong_to_their_vendor(tmp_path: Path) -> None:
    """A vendor's own option reaches its code; the same option on another vendor is refused."""
    cfg = _load(tmp_path, _account('login = "direct", phone_region = "il"'))
    assert cfg.accounts[0].options.model_extra == {"login": "direct"}
    assert cfg.accounts[0].options.phone_region == "IL"
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.options\.login: unknown option"):
        _load(tmp_path, _account('login = "direct"', vendor="swan"))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('login = "directly"', "options.login"),
        ('feeds = ["smss"]', "options.feeds"),
        ("feed_intervals = { smss = 5 }", "options.feed_intervals"),
        ("feed_intervals = { sms = 0 }", "options.feed_intervals.sms"),
        ('phone_region = "XX"', "options.phone_region"),
        ("poll_interval = 0", "options.poll_interval"),
    ],
)
def test_enumerated_account_options_are_checked_at_load(tmp_path: Path, options: str, field: str) -> None:
    """Each enumerated option (login mode, feed names, phone region) is checked when the file loads."""
    with pytest.raises(ConfigError, match=rf"accounts\[0\]\.{re.escape(field)}: "):
        _load(tmp_path, _account(options))


def test_every_option_vendor_code_reads_is_declared() -> None:
    """Vendor code reading an undeclared option would find it refused in every config file."""
    from pbxbridge.config import vendor_option_fields
    from pbxbridge.vendors import vendor_names

    reads = re.compile(r"""(?:model_extra|options|opts)\.get\(\s*["'](\w+)["']""")
    for vendor in vendor_names():
        source = "".join(p.read_text() for p in (VENDORS / vendor).glob("*.py"))
        read = set(reads.findall(source))
        assert read <= set(vendor_option_fields(vendor)), f"{vendor} reads undeclared options {read}"


def test_recording_formats_match_the_converter() -> None:
    """The formats Settings accepts are exactly those the recordings converter can write."""
    from services.recordings.convert import ARCHIVE_FORMATS, archive_extension

    assert set(RECORDING_FORMATS) == set(ARCHIVE_FORMATS)
    for fmt in RECORDING_FORMATS:
        archive_extension(fmt)


def test_unknown_recording_format_stops_start_up() -> None:
    """PBX_RECORDING_FORMAT outside the list is refused when settings load, naming the variable."""
    with pytest.raises(ConfigError, match=r"PBX_RECORDING_FORMAT: Input should be 'opus', 'mp3', 'flac' or 'wav'"):
        load_config(None, environ={"PBX_RECORDING_FORMAT": "ogg"})
    assert load_config(None, environ={"PBX_RECORDING_FORMAT": "flac"}).settings.recording_format == "flac"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://bridge:s3cret-pw@nats.example:4222", "nats://bridge:***@nats.example:4222"),
        ("tls://s3cret-token@nats.example", "tls://***@nats.example"),
    ],
)
def test_nats_url_secret_is_masked_in_repr_and_logs(url: str, shown: str, caplog: pytest.LogCaptureFixture) -> None:
    """repr and str of the settings show the URL masked; any log line quoting it is masked too."""
    settings = load_settings({"PBX_NATS_URL": url})
    assert settings.nats_url == url
    assert shown in repr(settings) and shown in str(settings) and shown in repr(Config(settings=settings, accounts=[]))
    assert "s3cret" not in repr(settings) + str(settings)
    logging.getLogger("anyone").warning("connecting to %s", url)
    assert "s3cret" not in caplog.text and "***" in caplog.text


def test_bad_nats_url_error_never_echoes_it() -> None:
    """A malformed PBX_NATS_URL is named, and its password is not repeated in the error."""
    with pytest.raises(ConfigError, match="PBX_NATS_URL: must look like nats://host:4222") as info:
        load_settings({"PBX_NATS_URL": "http://bridge:s3cret-pw@nats.example"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValidationError) as raw:
        Settings(_env_file=None, nats_url="http://bridge:s3cret-pw@nats.example")
    assert "s3cret" not in str(raw.value)
