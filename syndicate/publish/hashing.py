"""Build: the one hash behind dump content hashes and page fingerprints.

BLAKE2b with a 16-byte digest, as hex: stored in the `dumps` and `pages` tables, so
changing it makes the next build read and render everything again.
"""

from __future__ import annotations

import hashlib


def digest(data: bytes) -> str:
    """The hex BLAKE2b-128 digest of `data`."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
