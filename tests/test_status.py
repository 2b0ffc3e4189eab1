"""Status objects: the fast constructors of the bulk path equal the regular ones."""

from __future__ import annotations

import dataclasses
import pickle

from postillon.status import (
    RecipientStatus,
    SendStatus,
    delivered_status,
    recipient_status,
)


def test_recipient_status_equals_the_constructor() -> None:
    fast = recipient_status(250, "2.0.0 ok", True)
    assert fast == RecipientStatus(250, "2.0.0 ok", True)
    assert hash(fast) == hash(RecipientStatus(250, "2.0.0 ok", True))


def test_delivered_status_sets_every_field() -> None:
    recips = {"b@example.org": recipient_status(250, "ok", True)}
    fast = delivered_status(250, "ok", "2.0.0", "<id@example.org>", recips)
    slow = SendStatus(
        success=True,
        status=250,
        status_text="ok",
        stage=None,
        enhanced_status="2.0.0",
        message_id="<id@example.org>",
        recipients=recips,
    )
    # every field, by name: a field added to SendStatus and forgotten by the fast
    # constructor fails here rather than as an AttributeError in a bulk send
    for f in dataclasses.fields(SendStatus):
        assert getattr(fast, f.name) == getattr(slow, f.name), f.name
    assert fast == slow
    assert fast.errors is not slow.errors  # a list of its own
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert SendStatus.from_dict(fast.to_dict()) == slow
    assert fast.accepted == ["b@example.org"] and fast.raise_for_status() is fast
