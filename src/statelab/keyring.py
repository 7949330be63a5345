"""One key per purpose, derived from the deployment's one secret.

``STATELAB_SECRET_KEY`` is never used as a key itself. HKDF-SHA256 (RFC 5869)
turns it into an independent 32-byte key for each thing we sign, so a value
signed for one purpose (a cart cookie) can never pass for another (a session
token), and learning one derived key tells nothing about the others or the secret.
The ``info`` label of each purpose is part of the data format: changing it makes
every value signed under the old label invalid, so it carries a version.

Explicit ``jwt_keys`` (rotation by ``kid``) are used as given: a token issuer
outside statelab may share them.

How strong a secret must be (``secret_problem``) is an estimate, not a
measurement — one string cannot show how it was made. The rule is conservative:

- at least 32 bytes (UTF-8), and
- length x log2(size of the character classes it uses) >= 256 bits, where the
  classes are a-z (26), A-Z (26), 0-9 (10) and everything else (33, the ASCII
  punctuation and space), and
- some variety: at least 8 different characters, none making up more than a
  quarter of the string, and not one shorter piece repeated ("abcd" * 16).

64 hex characters from a CSPRNG (``secrets.token_hex(32)``, 256 bits) always pass.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The command every refusal suggests.
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_hex(32))"'
MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 256
MIN_DISTINCT_CHARACTERS = 8
#: Sizes of the character classes of the estimate (see the module docstring).
_CLASSES: tuple[tuple[str, int], ...] = (
    (string.ascii_lowercase, 26),
    (string.ascii_uppercase, 26),
    (string.digits, 10),
)
_OTHER_CLASS = 33

#: HKDF ``info`` label of each purpose; v1 is the format of the values signed with it.
_PURPOSES = {
    "jwt": b"statelab/v1/jwt-hs256",
    "cart": b"statelab/v1/client-cart-cookie",
    "csrf": b"statelab/v1/anonymous-csrf",
    "file_ids": b"statelab/v1/job-output-file-ids",
}


def estimated_bits(secret: str) -> float:
    """Length x log2 of the summed sizes of the character classes the secret uses."""
    pool = sum(size for chars, size in _CLASSES if any(c in chars for c in secret))
    if any(not c.isascii() or not c.isalnum() for c in secret):
        pool += _OTHER_CLASS
    return len(secret) * math.log2(pool) if pool else 0.0


def _low_variety(secret: str) -> bool:
    counts = Counter(secret)
    repeated = secret in (secret + secret)[1:-1]  # some shorter piece, repeated
    too_common = max(counts.values()) * 4 > len(secret)
    return len(counts) < MIN_DISTINCT_CHARACTERS or too_common or repeated


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign with, or None; never quotes the secret."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        why = f"is {size} bytes long; at least {MIN_SECRET_BYTES} are needed"
    elif (bits := estimated_bits(secret)) < MIN_SECRET_BITS:
        why = f"is estimated at {bits:.0f} bits of entropy; at least {MIN_SECRET_BITS} are needed"
    elif _low_variety(secret):
        why = (
            f"has too little variety (fewer than {MIN_DISTINCT_CHARACTERS} different "
            "characters, one character over a quarter of it, or a repeated piece)"
        )
    else:
        return None
    return (
        f"{why} (estimate: length x log2 of the character classes used). "
        f"Make one with: {MAKE_SECRET}"
    )


def derive(secret: str, purpose: str) -> bytes:
    """The 32-byte key of ``purpose`` (a key of ``_PURPOSES``) under ``secret``."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSES[purpose])
    return hkdf.derive(secret.encode())


@dataclass(frozen=True, slots=True)
class Keys:
    """The key of each purpose. Built once per process by ``Keys.derive``."""

    jwt: Mapping[str, bytes] = field(repr=False)  # kid -> HS256 key
    cart: bytes = field(repr=False)  # HMAC of client-side cart cookies
    csrf: bytes = field(repr=False)  # CSRF tokens of anonymous visitors
    file_ids: bytes = field(repr=False)  # ids of files written by jobs

    @classmethod
    def derive(cls, secret: str, jwt_keys: Mapping[str, str], active_kid: str) -> Keys:
        """Every purpose's key: explicit JWT keys as given, the rest from ``secret``."""
        jwt = {kid: key.encode() for kid, key in jwt_keys.items()}
        return cls(
            jwt=MappingProxyType(jwt or {active_kid: derive(secret, "jwt")}),
            cart=derive(secret, "cart"),
            csrf=derive(secret, "csrf"),
            file_ids=derive(secret, "file_ids"),
        )
