"""Attachments (4D ``MAIL New attachment``): a path, bytes or a binary file object.

A path or file source is never held whole in memory: it is read in blocks while the
message is written (:meth:`Attachment.iter_blocks`). File names are made safe at
construction (basename only, no controls or bidi overrides, at most 255 characters;
security.md 1.15 and 3.6 row 28), so ``name`` is exactly what the recipient sees.

Example::

    Attachment("report.pdf")                      # type application/pdf, "attachment"
    Attachment(png_bytes, name="logo.png", cid="logo")   # inline, for <img src="cid:logo">
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..errors import InvalidMessage
from ._text import check_token_text

__all__ = ["Attachment", "guess_type", "safe_filename"]

#: 4D's extension table (``MAIL New attachment`` without ``type``); checked before
#: the ``mimetypes`` module so that results do not depend on the host's mime.types
FOURD_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "ppt": "application/vnd.ms-powerpoint",
    "zip": "application/zip",
    "gz": "application/gzip",
    "json": "application/json",
    "js": "application/javascript",
    "ps": "application/postscript",
    "xml": "application/xml",
    "htm": "text/html",
    "html": "text/html",
    "mp3": "audio/mpeg",
}
_COMPRESSED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}

#: read size for file sources: 57 * 840 bytes give 65,520 octets of 76-column base64
BLOCK = 57 * 840
MAX_NAME = 255

_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\Z")
_CID = re.compile(r"[!-;=?-~]+\Z")  # printable ASCII without '<', '>' and space
# "scheme://" sources (phar://, file://, http://...) are never opened (security.md 1.15)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
# bidi embeddings, overrides and isolates, zero-width marks: they disguise extensions
_BIDI = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def guess_type(name: str) -> str:
    """4D's table, then ``mimetypes``, else ``application/octet-stream``.

    Example::

        >>> guess_type("photo.JPG")
        'image/jpeg'
    """
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in FOURD_TYPES:
        return FOURD_TYPES[ext]
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return _COMPRESSED.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def safe_filename(name: str, default: str = "attachment") -> str:
    """A file name safe to show a recipient: a basename without controls.

    Example::

        >>> safe_filename("../../etc/passwd")
        'passwd'
        >>> safe_filename("a\\r\\nX: y.pdf")
        'aX: y.pdf'
    """
    # both separators: a Windows path sent from POSIX is still a path for the reader
    base = re.split(r"[/\\]", name)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch) not in ("Cc", "Cs"))
    base = _BIDI.sub("", base)
    base = base.replace("\u2028", "").replace("\u2029", "")
    if re.match(r"[A-Za-z]:[^ ]", base):  # a drive letter, as in "C:x"
        base = base[2:]
    base = base.strip().strip(".").strip()
    if not base:
        return default
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            base = stem[: MAX_NAME - len(ext) - 1] + "." + ext
        else:
            base = base[:MAX_NAME]
    return base


def _check_path(path: str) -> None:
    if "\x00" in path:
        raise InvalidMessage("a path may not hold NUL", "source")
    if path.startswith(("\\\\", "//")):
        raise InvalidMessage("UNC and network paths are not accepted", "source")
    if _SCHEME.match(path) and not re.match(r"[A-Za-z]:[\\/]", path):
        raise InvalidMessage(
            "URL-like sources (file://, phar://, http://...) are not accepted; pass a path",
            "source",
        )


class Attachment:
    """An attachment (4D ``MAIL New attachment``).

    ``source`` is a path (``str`` or ``os.PathLike``), ``bytes`` or a binary file object.
    Without ``name``, a path gives its file name. Without ``type``, the extension
    decides (4D's table, then ``mimetypes``, else ``application/octet-stream``).
    ``disposition`` defaults to ``"inline"`` with a ``cid``, else ``"attachment"``.

    Example::

        >>> a = Attachment(b"%PDF-1.4 ...", name="report.pdf")
        >>> (a.type, a.disposition, a.size)
        ('application/pdf', 'attachment', 12)
    """

    __slots__ = (
        "_content",
        "_file",
        "_path",
        "_start",
        "_used",
        "cid",
        "disposition",
        "name",
        "type",
    )

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
        name: str | None = None,
        cid: str | None = None,
        type: str | None = None,  # noqa: A002 - 4D's parameter name
        disposition: str | None = None,
    ) -> None:
        self._content: bytes | None = None
        self._path: str | None = None
        self._file: BinaryIO | None = None
        self._start = 0
        self._used = False
        given_name = name
        if isinstance(source, bytes | bytearray | memoryview):
            self._content = bytes(source)
        elif isinstance(source, str | os.PathLike):
            path = os.fspath(source)
            if not isinstance(path, str):
                raise InvalidMessage("a path must be text", "source")
            _check_path(path)
            try:
                st = os.stat(path)
            except OSError as exc:
                raise InvalidMessage(f"cannot read {path!r}: {exc.strerror}", "source") from None
            if not stat.S_ISREG(st.st_mode):
                raise InvalidMessage(f"{path!r} is not a regular file", "source")
            self._path = os.path.abspath(path)
            if given_name is None:
                given_name = os.path.basename(path)
        elif isinstance(source, io.TextIOBase):
            raise InvalidMessage("a file object must be opened in binary mode", "source")
        elif hasattr(source, "read"):
            self._file = source
            try:
                self._start = source.tell() if source.seekable() else -1
            except (OSError, AttributeError, ValueError):
                self._start = -1
            if given_name is None:
                file_name = getattr(source, "name", None)
                if isinstance(file_name, str):
                    given_name = os.path.basename(file_name)
        else:
            raise InvalidMessage(
                f"expected a path, bytes or a binary file, not {builtins_type(source)}", "source"
            )
        if given_name is not None and not isinstance(given_name, str):
            raise InvalidMessage("must be a str", "name")
        self.name = safe_filename(given_name or "")
        if cid is not None:
            cid = check_token_text(cid, "cid").strip()
            if cid.startswith("<") and cid.endswith(">"):
                cid = cid[1:-1]
            if not cid:
                cid = None
            elif not _CID.match(cid):
                raise InvalidMessage("must be printable ASCII without spaces or '<>'", "cid")
        self.cid: str | None = cid
        if type is None or not str(type).strip():
            self.type = guess_type(self.name)
        else:
            mime_type = check_token_text(type, "type").strip().lower()
            if not _TYPE.match(mime_type):
                raise InvalidMessage(f"not a MIME type: {type!r}", "type")
            if mime_type.startswith("multipart/"):
                raise InvalidMessage("an attachment cannot be multipart", "type")
            self.type = mime_type
        if disposition is None or not str(disposition).strip():
            self.disposition = "inline" if self.cid else "attachment"
        else:
            disp = check_token_text(disposition, "disposition").strip().lower()
            if disp not in ("inline", "attachment"):
                raise InvalidMessage("must be 'inline' or 'attachment'", "disposition")
            self.disposition = disp

    # ---------------------------------------------------------------- properties

    @property
    def path(self) -> str | None:
        """The absolute path of a file source, else None."""
        return self._path

    @property
    def size(self) -> int | None:
        """Size of the content in bytes (None for a file object that cannot seek)."""
        if self._content is not None:
            return len(self._content)
        if self._path is not None:
            return os.stat(self._path).st_size
        assert self._file is not None
        if self._start < 0:
            return None
        pos = self._file.tell()
        end = self._file.seek(0, io.SEEK_END)
        self._file.seek(pos)
        return max(0, end - self._start)

    @property
    def is_file_source(self) -> bool:
        """True when the content is read from a file while sending."""
        return self._content is None

    def get_content(self) -> bytes:
        """The whole content in memory (4D ``getContent()``)."""
        return b"".join(self.iter_blocks())

    def iter_blocks(self, block: int = BLOCK) -> Iterator[bytes]:
        """The content in blocks of ``block`` bytes (the last may be shorter).

        A path is opened for each iteration; a seekable file object is rewound to its
        starting position; a file object that cannot seek can be read only once.
        """
        if self._content is not None:
            view = memoryview(self._content)
            for start in range(0, len(view), block):
                yield bytes(view[start : start + block])
            return
        if self._path is not None:
            with open(self._path, "rb") as fh:
                yield from _read_blocks(fh, block)
            return
        fobj = self._file
        assert fobj is not None
        if self._start < 0:
            if self._used:
                raise ValueError(
                    f"attachment {self.name!r}: its file object cannot seek and was read already"
                )
            self._used = True
            yield from _read_blocks(fobj, block)
            return
        # seek before every read: two iterations of the same attachment (a retry while
        # a transcript is still reading) never disturb each other's position
        pos = self._start
        while True:
            fobj.seek(pos)
            data = fobj.read(block)
            if not data:
                return
            pos += len(data)
            yield bytes(data)

    # ---------------------------------------------------------------- values

    def to_dict(self) -> dict[str, Any]:
        """4D-shaped description (``name``, ``type``, ``cid``, ``disposition``, ``size``,
        ``path``); the content itself is not included."""
        return {
            "name": self.name,
            "type": self.type,
            "cid": self.cid,
            "disposition": self.disposition,
            "size": self.size,
            "path": self._path,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attachment):
            return NotImplemented
        same_meta = (self.name, self.type, self.cid, self.disposition) == (
            other.name,
            other.type,
            other.cid,
            other.disposition,
        )
        return same_meta and self.get_content() == other.get_content()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = f"path={self._path!r}" if self._path else f"size={self.size}"
        cid = f", cid={self.cid!r}" if self.cid else ""
        return f"Attachment(name={self.name!r}, type={self.type!r}{cid}, {where})"


def builtins_type(value: object) -> str:
    """The type name of ``value`` for error messages."""
    return type(value).__name__


def _read_blocks(fh: BinaryIO, block: int) -> Iterator[bytes]:
    while True:
        data = fh.read(block)
        if not data:
            return
        if not isinstance(data, bytes | bytearray):
            raise InvalidMessage("the file object must return bytes", "source")
        # a raw stream may return short reads; refill so base64 lines stay aligned
        while len(data) < block:
            more = fh.read(block - len(data))
            if not more:
                break
            data += more
        yield bytes(data)
