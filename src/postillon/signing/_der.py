"""A small DER encoder (ITU-T X.690), just enough for CMS SignedData (RFC 5652).

Only encoding, never decoding: everything we parse (certificates, keys, PKCS#12) is
parsed by ``cryptography``. Each function returns the complete TLV as ``bytes``, so
structures are built bottom-up by nesting calls::

    >>> sequence(integer(1), null()).hex()
    '30050201010500'
"""

from __future__ import annotations

import datetime

__all__ = [
    "context",
    "generalized_time",
    "integer",
    "null",
    "octet_string",
    "oid",
    "sequence",
    "set_of",
    "tlv",
    "utc_time",
]

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


def _length(n: int) -> bytes:
    # X.690 8.1.3: short form below 128, else long form with the minimal number of octets
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """Encode one element: a one-octet ``tag``, the DER length, ``content``."""
    if not 0 <= tag <= 0xFF or tag & 0x1F == 0x1F:
        raise ValueError(f"tag {tag:#x} needs the multi-octet form, which is not supported")
    return bytes([tag]) + _length(len(content)) + content


def integer(value: int) -> bytes:
    """INTEGER, two's complement in the fewest octets (X.690 8.3)."""
    magnitude = value if value >= 0 else ~value
    size = max(1, (magnitude.bit_length() + 8) // 8)  # +8 keeps room for the sign bit
    return tlv(TAG_INTEGER, value.to_bytes(size, "big", signed=True))


def null() -> bytes:
    """NULL."""
    return tlv(TAG_NULL, b"")


def octet_string(data: bytes) -> bytes:
    """OCTET STRING (primitive: DER forbids the constructed form)."""
    return tlv(TAG_OCTET_STRING, data)


def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted form, e.g. ``"1.2.840.113549.1.7.2"``."""
    try:
        arcs = [int(part) for part in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not a dotted object identifier: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"not a valid object identifier: {dotted!r}")
    # X.690 8.19.4: the first two arcs share one subidentifier
    subids = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for subid in subids:
        # base 128, most significant group first, high bit set on all but the last
        groups = [subid & 0x7F]
        rest = subid >> 7
        while rest:
            groups.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out.extend(reversed(groups))
    return tlv(TAG_OID, bytes(out))


def sequence(*items: bytes) -> bytes:
    """SEQUENCE of already-encoded items, in the order given."""
    return tlv(TAG_SEQUENCE, b"".join(items))


def set_of(*items: bytes, tag: int = TAG_SET) -> bytes:
    """SET OF already-encoded items, sorted as DER requires (X.690 11.6).

    ``tag`` lets a caller use the same sorted encoding under an IMPLICIT context tag
    (CMS ``signedAttrs [0] IMPLICIT SET OF Attribute``).
    """
    return tlv(tag, b"".join(sorted(items)))


def context(number: int, content: bytes, *, constructed: bool = True) -> bytes:
    """A context-specific tag ``[number]`` around ``content``.

    For EXPLICIT tagging pass the complete inner TLV; for IMPLICIT tagging of a
    constructed type pass the inner type's *content* octets.
    """
    if not 0 <= number <= 30:
        raise ValueError(f"context tag [{number}] is out of range")
    return tlv(0x80 | (0x20 if constructed else 0) | number, content)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return moment.astimezone(datetime.UTC)


def utc_time(moment: datetime.datetime) -> bytes:
    """UTCTime ``YYMMDDHHMMSSZ`` (X.690 11.8); valid for the years 1950 to 2049."""
    moment = _utc(moment)
    if not 1950 <= moment.year <= 2049:
        raise ValueError("UTCTime covers the years 1950 to 2049 only")
    return tlv(TAG_UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))


def generalized_time(moment: datetime.datetime) -> bytes:
    """GeneralizedTime ``YYYYMMDDHHMMSSZ`` (X.690 11.7), whole seconds."""
    moment = _utc(moment)
    return tlv(TAG_GENERALIZED_TIME, moment.strftime("%Y%m%d%H%M%SZ").encode("ascii"))
