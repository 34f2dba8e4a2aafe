"""Resource ids, generated the way the hosted service generates them (reference §1.2)."""

from __future__ import annotations

import re
import secrets
import string

ALPHABET = string.ascii_lowercase + string.digits
MAX_ID = 40


def random_suffix(length: int = 12) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def tuned_model_id(display_name: str) -> str:
    """`Sentence Translator` → `sentence-translator-u3b7m0x9qa2k`; no display name → a
    random id that starts with a letter."""
    words = re.findall(r"[a-z0-9]+", display_name.lower())
    suffix = random_suffix()
    stem = "-".join(words)[: MAX_ID - len(suffix) - 1].strip("-")
    if stem and stem[0].isalpha():
        return f"{stem}-{suffix}"
    return secrets.choice(string.ascii_lowercase) + random_suffix(11)


def operation_id() -> str:
    return random_suffix(12)


def permission_id() -> str:
    """Lowercase letters and digits only: google-generativeai rejects anything else."""
    return random_suffix(16)
