"""The public surface is exactly API.md's: ``__all__`` is checked against the document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import postillon

API_MD = Path(__file__).resolve().parents[2] / "shared" / "API.md"

# Every name API.md says is importable from the top package (sections 1, 2, 3, 7).
EXPECTED = {
    # 1. Transporter
    "Transporter", "AsyncTransporter", "Security", "IgnoreCert", "AuthMode", "Status",
    "SendStatus", "ErrorInfo", "RecipientStatus", "Dsn", "DkimSigner",
    # 2. Email
    "Email", "Address", "Attachment", "CharsetMode", "Priority", "RawMessage", "to_mime",
    "iter_mime", "from_mime",
    # 3. Spool
    "Spool", "SpoolState", "SpoolEntry", "RetryPolicy",
    # 7. Exceptions
    "SMTPError", "TransportError", "ConnectError", "TimeoutError", "ServerDisconnected",
    "TLSError", "ProtocolError", "ReplyError", "AuthenticationError", "SenderRefused",
    "RecipientsRefused", "DataRefused", "InvalidMessage",
}  # fmt: skip


def test_all_is_exactly_the_contract() -> None:
    assert set(postillon.__all__) == EXPECTED
    assert postillon.__all__ == sorted(postillon.__all__)
    for name in postillon.__all__:
        assert getattr(postillon, name) is not None


def test_every_public_name_is_named_in_api_md() -> None:
    if not API_MD.exists():
        pytest.skip("API.md is not beside the checkout")
    text = API_MD.read_text()
    for name in EXPECTED:
        assert re.search(rf"\b{re.escape(name)}\b", text), name


def test_every_public_name_has_a_docstring() -> None:
    for name in postillon.__all__:
        obj = getattr(postillon, name)
        assert (obj.__doc__ or "").strip(), name


def test_exceptions_form_one_tree_and_pickle() -> None:
    import pickle

    for name in EXPECTED:
        obj = getattr(postillon, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, postillon.SMTPError), name
    assert issubclass(postillon.TimeoutError, TimeoutError)
    assert issubclass(postillon.InvalidMessage, ValueError)
    samples = [
        postillon.ReplyError(451, "later", "4.3.0"),
        postillon.RecipientsRefused(550, "no", "5.1.1", {"a@x": (550, "no")}),
        postillon.InvalidMessage("bad", "to"),
        postillon.ServerDisconnected("gone"),
    ]
    for exc in samples:
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    assert (
        postillon.ReplyError(451, "x").is_transient and postillon.ReplyError(550, "x").is_permanent
    )


def test_every_public_member_has_a_docstring() -> None:
    missing = []
    for name in postillon.__all__:
        obj = getattr(postillon, name)
        if not isinstance(obj, type) or issubclass(obj, BaseException):
            continue
        for klass in obj.__mro__:
            if klass.__module__.split(".")[0] != "postillon":
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else value
                if (isinstance(value, property) or callable(func)) and not (
                    getattr(func, "__doc__", None) or ""
                ).strip():
                    missing.append(f"{name}.{attr}")
    assert missing == []
