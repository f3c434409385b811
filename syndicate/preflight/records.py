"""Preflight: the DKIM key record and the DMARC record, parsed and compared. Pure apart from DNS.

Tag lists (`k=v; k=v`) follow RFC 6376 3.2 and RFC 7489 6.4.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

# rsaEncryption (1.2.840.113549.1.1.1), DER-encoded with its NULL parameters.
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
_DMARC_POLICIES = ("none", "quarantine", "reject")


class RecordError(ValueError):
    """A record or key does not parse; the message says what is wrong."""


def parse_tags(record: str) -> dict[str, str]:
    """Parse a tag list into {tag: value} (tags lower-cased, values stripped)."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise RecordError(f"{part.strip()!r} is not a tag=value pair")
        tags[name] = value.strip()
    return tags


@dataclass(frozen=True, slots=True)
class RsaKey:
    """An RSA public key: modulus and public exponent."""

    modulus: int
    exponent: int

    @property
    def bits(self) -> int:
        return self.modulus.bit_length()

    def to_der(self) -> bytes:
        """The key as DER SubjectPublicKeyInfo, the form DKIM's `p=` carries (base64)."""
        rsa = _der(0x30, _der_int(self.modulus) + _der_int(self.exponent))
        return _der(0x30, _RSA_ALGORITHM + _der(0x03, b"\x00" + rsa))

    def to_p(self) -> str:
        return base64.b64encode(self.to_der()).decode("ascii")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def private_key_public_part(pem: bytes) -> RsaKey:
    """The public half of a PEM RSA private key (PKCS#1 or PKCS#8), via dkimpy's parser."""
    import dkim.crypto  # dkimpy: already the signer's key parser

    try:
        key = dkim.crypto.parse_pem_private_key(pem)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError) as exc:
        raise RecordError(f"not an RSA private key dkimpy can read ({exc})") from exc
    return RsaKey(int(key["modulus"]), int(key["publicExponent"]))


def dkim_record_key(record: str) -> RsaKey:
    """The RSA key of a DKIM key record (`v=DKIM1; k=rsa; p=...`).

    Raises RecordError for another key type, a revoked key (empty `p=`) or bad base64/DER.
    """
    import dkim.crypto

    tags = parse_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        raise RecordError(f"v={tags['v']} is not DKIM1")
    if tags.get("k", "rsa").lower() != "rsa":
        raise RecordError(f"k={tags['k']} is not rsa (syndicate signs with rsa-sha256)")
    if "p" not in tags:
        raise RecordError("it has no p= (public key) tag")
    data = re.sub(r"\s+", "", tags["p"])
    if not data:
        raise RecordError("its p= is empty: the key is revoked")
    try:
        der = base64.b64decode(data, validate=True)
        key = dkim.crypto.parse_public_key(der)
    # dkimpy's DER parser asserts on some garbage (a NULL with a length): a record is
    # whatever the nameserver answers.
    except (
        binascii.Error,
        ValueError,
        dkim.crypto.UnparsableKeyError,
        IndexError,
        AssertionError,
    ) as exc:
        reason = str(exc) or "bad DER"
        raise RecordError(f"its p= is not a base64 RSA public key ({reason})") from exc
    return RsaKey(int(key["modulus"]), int(key["publicExponent"]))


@dataclass(frozen=True, slots=True)
class DmarcPolicy:
    """The parts of a DMARC record worth reporting."""

    policy: str
    subdomain_policy: str
    percent: int
    reports: str  # rua=, may be empty


def parse_dmarc(record: str) -> DmarcPolicy:
    """Parse a DMARC record; raise RecordError when it is not valid (RFC 7489 6.3, 6.4)."""
    if not re.match(r"(?i)v\s*=\s*DMARC1\s*(;|$)", record):
        raise RecordError("it does not start with v=DMARC1")
    tags = parse_tags(record)
    policy = tags.get("p", "").lower()
    if policy not in _DMARC_POLICIES:
        shown = f"p={tags['p']}" if "p" in tags else "no p= tag"
        raise RecordError(f"{shown}; expected p=none, p=quarantine or p=reject")
    subdomain = tags.get("sp", policy).lower()
    if subdomain not in _DMARC_POLICIES:
        raise RecordError(f"sp={tags['sp']} is not none, quarantine or reject")
    percent_text = tags.get("pct", "100")
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and at most 3 of them
    # past leading zeros (int reads no more than 4,300).
    if not re.fullmatch(r"0*[0-9]{1,3}", percent_text) or int(percent_text) > 100:
        raise RecordError(f"pct={percent_text} is not a number from 0 to 100")
    return DmarcPolicy(policy, subdomain, int(percent_text), tags.get("rua", ""))
