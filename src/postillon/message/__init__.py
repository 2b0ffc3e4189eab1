"""The Email model and streaming MIME (API.md section 2).

Public names: :class:`Email`, :class:`Address`, :class:`Attachment`,
:class:`CharsetMode`, :class:`Priority`, :class:`RawMessage`, :func:`to_mime`,
:func:`iter_mime`, :func:`from_mime`; and :func:`prepare`, which the transport uses to
turn any accepted message into a :class:`~postillon.message.prepared.Prepared`.

Example::

    from postillon.message import Email, Attachment, to_mime
    mail = Email(from_="Ann <ann@example.com>", to="bob@example.org",
                 subject="Café", text_body="Bonjour", attachments=[Attachment("a.pdf")])
    data = to_mime(mail)
"""

from __future__ import annotations

from .address import Address
from .attachment import Attachment
from .charset import CharsetMode
from .model import Email, Priority, RawMessage
from .prepare import prepare
from .prepared import Prepared
from .reader import from_mime
from .writer import iter_mime, to_mime

__all__ = [
    "Address",
    "Attachment",
    "CharsetMode",
    "Email",
    "Prepared",
    "Priority",
    "RawMessage",
    "from_mime",
    "iter_mime",
    "prepare",
    "to_mime",
]
