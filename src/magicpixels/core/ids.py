"""Opaque ids with a type prefix that sort by creation time and cannot be guessed.

Written here because ULID libraries carry 80 random bits and the API asks for at least 96: an
id is 50 bits of milliseconds then 100 random bits, in Crockford base32 (30 characters).
"""

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 100


def new_id(prefix: str) -> str:
    value = (time.time_ns() // 1_000_000) << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
    chars = []
    for _ in range(30):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
