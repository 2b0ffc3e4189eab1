"""Signing of outgoing mail: S/MIME (RFC 8551) and DKIM (RFC 6376, RFC 8463).

Each signer is a transformation ``Prepared -> Prepared`` that streams: the message is
read chunk by chunk, once to hash and once more while it is sent, and is never joined
in memory. When both apply, S/MIME signs first and DKIM signs the result, so that DKIM
covers the ``multipart/signed`` structure a receiver sees.

``cryptography`` (the extra ``postillon[crypto]``) is imported only when a signer is
built, so importing this package costs nothing without it.

Example::

    from postillon.signing import DkimSigner, SmimeSigner

    smime = SmimeSigner("me.p12", "s3cret")
    dkim = DkimSigner("example.com", "s1", "/etc/postillon/dkim.pem")
    ready = dkim.sign(smime.sign(prepared))
"""

from __future__ import annotations

from ..message.prepared import Prepared
from .dkim import DEFAULT_HEADERS, DkimSigner
from .smime import SmimeSigner

__all__ = ["DEFAULT_HEADERS", "DkimSigner", "SmimeSigner", "sign"]


def sign(prepared: Prepared, smime: SmimeSigner | None, dkim: DkimSigner | None) -> Prepared:
    """Apply the signers that are given: S/MIME first, then DKIM over the final bytes."""
    if smime is not None:
        prepared = smime.sign(prepared)
    if dkim is not None:
        prepared = dkim.sign(prepared)
    return prepared
