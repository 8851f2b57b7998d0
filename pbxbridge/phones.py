"""Phone numbers to E.164, with Google's libphonenumber rules (the ``phonenumbers`` package)."""

from __future__ import annotations

import phonenumbers


def to_e164(raw: str | int | None, region: str = "US") -> str | None:
    """The number in E.164, or None when it is not a valid phone number (short codes, names).

    Digits-only numbers that already start with a country code (Yemot's ``972501234567``)
    parse as international when they are not valid in ``region``."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    candidates = [text]
    if text.isdigit() and not text.startswith("0"):
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def phone_field(raw: str | int | None, region: str) -> dict[str, str | None]:
    """The shape every event uses for a number: the vendor's form beside E.164."""
    return {"raw": None if raw is None else str(raw), "e164": to_e164(raw, region)}
