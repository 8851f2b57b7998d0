"""Phone numbers: E.164 for every possible number, and a separate flag for known blocks."""

from __future__ import annotations

import pytest

from pbxbridge.phones import phone_field, to_e164


@pytest.mark.parametrize(("raw", "e164"), [
    (972501234567, "+972501234567"),  # the Yemot document's SMS example, "dest" (a JSON number)
    ("972541234567", "+972541234567"),  # and its "phone"
])
def test_yemot_document_examples_get_e164_though_not_valid(raw: object, e164: str) -> None:
    """The document's own example numbers are possible, in blocks the library does not list:
    e164 is filled and valid says false."""
    assert phone_field(raw, "IL") == {"raw": str(raw), "e164": e164, "valid": False}


def test_known_block_is_valid() -> None:
    """A number in an allocated block (the Yemot document's SIP user 0773137770) is valid too."""
    assert phone_field("0773137770", "IL") == {"raw": "0773137770", "e164": "+972773137770", "valid": True}


@pytest.mark.parametrize("raw", ["077313", "0511111", "12345", "sip-user", "", None])
def test_impossible_numbers_have_no_e164(raw: object) -> None:
    """Short codes, a trunk 0 with too few digits after it, and names have no E.164 form."""
    field = phone_field(raw, "IL")
    assert field["e164"] is None and field["valid"] is False and to_e164(raw, "IL") is None


def test_international_digits_are_read_in_any_region() -> None:
    """Digits starting with a country code parse as international when the region cannot read them."""
    assert phone_field("972501234567", "US")["e164"] == "+972501234567"
    assert phone_field("0612345678", "IT") == {"raw": "0612345678", "e164": "+390612345678", "valid": True}
