"""Phone numbers to E.164, with Google's libphonenumber rules (the ``phonenumbers`` package).

Two questions, answered apart: is the number *possible* for its region (right length, a
country code that exists: then it has an E.164 form), and is it *valid* (the library knows its
block as allocated). The library's block lists lag behind the operators: a real number, or a
vendor document's example, may be possible and not valid; its E.164 form is still worth having.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumber, ValidationResult

from pbxbridge.events import Phone


def _parse(raw: str | int | None, region: str) -> PhoneNumber | None:
    """The best reading of ``raw``: valid first, else possible; None when it is neither.

    Digits-only numbers that already start with a country code (Yemot's ``972501234567``)
    are also read as international when that reading is better than the national one."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    candidates = [text]
    if text.isdigit() and not text.startswith("0"):
        candidates.append("+" + text)
    possible: PhoneNumber | None = None
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return number
        if possible is None and _is_possible(number):
            possible = number
    return possible


def _is_possible(number: PhoneNumber) -> bool:
    if phonenumbers.is_possible_number_with_reason(number) != ValidationResult.IS_POSSIBLE:
        return False  # too short/long, or dialable only locally (no E.164 form)
    if number.italian_leading_zero:
        # A leading 0 the parser could not strip as the trunk prefix (the rest was too short):
        # not a full number, unless the region really writes national numbers with a 0 (Italy).
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(phonenumbers.region_code_for_number(number))
        return metadata is not None and not metadata.national_prefix
    return True


def to_e164(raw: str | int | None, region: str = "US") -> str | None:
    """The number in E.164, or None when it is not a possible phone number (short codes, names)."""
    number = _parse(raw, region)
    return None if number is None else phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_field(raw: str | int | None, region: str) -> dict[str, str | bool | None]:
    """The shape every event uses for a number: the vendor's form beside E.164, and whether the
    library knows the number's block (``valid``; false for a possible but unlisted number)."""
    number = _parse(raw, region)
    return {
        "raw": None if raw is None else str(raw),
        "e164": None if number is None else phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        "valid": number is not None and phonenumbers.is_valid_number(number),
    }


@lru_cache(maxsize=4096)
def phone(raw: str | int | None, region: str) -> Phone:
    """``phone_field`` as the event model, made once per number and region and shared by every
    event that carries it (``Phone`` is frozen): a poll's page repeats a few numbers thousands
    of times, and an event validates a ready ``Phone`` at half the cost of its dict."""
    return Phone.model_validate(phone_field(raw, region))
