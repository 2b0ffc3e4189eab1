"""The pipelined transaction loop against a model server and an oracle (hypothesis).

Each message of a batch gets a plan: the server's code for MAIL, for every RCPT, for
DATA and for the end of data. A small model server answers what the client actually
wrote, command by command, and queues its replies the way a real server does (all the
answers to one write in one chunk). The oracle says, from the plan alone, which status
each message must end with. The hot loop records the hoped-for replies at once and has
the state table judge them after its next write; this checks that every mix of
successes and failures still yields the statuses, the wire and the final session state
of a conversation that judged every reply as it came.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postillon.errors import ProtocolError
from postillon.message.prepared import Prepared
from postillon.protocol.conversation import (
    FLUSH,
    READ,
    Conversation,
    Done,
    ReadUpTo,
    SendOptions,
    SessionConfig,
    State,
    Write,
    WriteBody,
)
from postillon.settings import Security
from postillon.status import SendStatus

from .test_conversation import at_hand

EHLO = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


@dataclass(frozen=True)
class Plan:
    """The server's answers to one message's commands."""

    mail: int
    rcpts: tuple[int, ...]
    data: int
    eod: int


class ModelServer:
    """Answers the client's bytes: commands one per line, a body up to its lone dot."""

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = plans
        self.index = -1  # the message whose MAIL came last
        self.rcpt = 0
        self.in_body = False
        self.pending = b""
        self.bodies = 0

    def take(self, data: bytes) -> bytes:
        """The replies to ``data`` (what the client wrote since it last read)."""
        out: list[bytes] = []
        self.pending += data
        while b"\r\n" in self.pending:
            line, self.pending = self.pending.split(b"\r\n", 1)
            if self.in_body:
                if line == b".":
                    self.in_body = False
                    self.bodies += 1
                    out.append(b"%d end\r\n" % self.plans[self.index].eod)
                continue
            verb = line.split(b" ", 1)[0].split(b":", 1)[0]
            if verb == b"MAIL":
                self.index += 1
                self.rcpt = 0
                out.append(b"%d mail\r\n" % self.plans[self.index].mail)
            elif verb == b"RCPT":
                # after a refused MAIL, a recipient is out of sequence
                plan = self.plans[self.index]
                code = plan.rcpts[self.rcpt] if plan.mail == 250 else 503
                self.rcpt += 1
                out.append(b"%d rcpt\r\n" % code)
            elif verb == b"DATA":
                code = self.plans[self.index].data
                self.in_body = code == 354
                out.append(b"%d data\r\n" % code)
            elif verb == b"RSET":
                out.append(b"250 reset\r\n")
            else:  # pragma: no cover - the client wrote something unexpected
                raise AssertionError(line)
        return b"".join(out)


def run(plans: list[Plan]) -> tuple[Conversation, list[SendStatus], ModelServer]:
    conv = Conversation(SessionConfig("mx.test", 25, Security.NONE, "client.test"))
    conv.parser.feed(b"220 hi\r\n")
    _pump(conv, conv.handshake(), lambda _written: EHLO)
    server = ModelServer(plans)
    messages = [
        Prepared(
            "a@x.test",
            tuple(f"r{j}@x.test" for j in range(len(p.rcpts))),
            f"<{i}@x>",
            lambda: iter([b"Subject: x\r\n\r\nhello\r\n"]),
        )
        for i, p in enumerate(plans)
    ]
    done = _pump(conv, conv.transactions(messages, SendOptions()), server.take)
    return conv, done, server


def _pump(
    conv: Conversation, flow: Iterator[object], answer_to: Callable[[bytes], bytes]
) -> list[SendStatus]:
    """Drive ``flow``; what it wrote goes to ``answer_to`` when it flushes or reads."""
    written = bytearray()
    done: list[SendStatus] = []
    answer = None
    for _ in range(100_000):
        try:
            req = flow.send(answer)  # type: ignore[attr-defined]
        except StopIteration:
            assert not written, "bytes queued and never flushed"
            return done
        answer = None
        if isinstance(req, Write):
            written += req.data
        elif isinstance(req, WriteBody):
            for chunk in req.chunks:
                written += chunk
        elif req is READ or req is FLUSH or isinstance(req, ReadUpTo):
            if written:
                # One chunk for all the answers to one write, as smtp-sink and Postfix do.
                conv.parser.feed(answer_to(bytes(written)))
            written.clear()
            if req is not FLUSH:
                reply = conv.parser.next_reply()
                assert reply is not None, "the client waits for a reply nobody owes"
                answer = at_hand(conv, reply, req)
        elif isinstance(req, Done):
            done.append(req.status)
    raise AssertionError("the conversation did not end")


def expected(plan: Plan) -> tuple[bool, int, str | None]:
    """(success, status code, stage) the status of a message with this plan must have."""
    if plan.mail != 250:
        return False, plan.mail, "mail"
    accepted = [c for c in plan.rcpts if c in (250, 251)]
    if not accepted:
        return False, plan.rcpts[0], "rcpt"
    if plan.data != 354:
        return False, plan.data, "data"
    if plan.eod != 250:
        return False, plan.eod, "data"
    if len(accepted) < len(plan.rcpts):
        refused = next(c for c in plan.rcpts if c not in (250, 251))
        return False, refused, "rcpt"
    return True, 250, None


# After a refused MAIL a server still answers the pipelined RCPT and DATA (RFC 2920 3.1):
# the model answers RCPT with 503 "bad sequence", DATA as planned (a 354 there is ended
# with an empty body). The plans draw 503 elsewhere too, so refusals come in any order.
plans = st.lists(
    st.builds(
        Plan,
        mail=st.sampled_from([250, 250, 250, 451, 550]),
        rcpts=st.lists(st.sampled_from([250, 250, 251, 450, 550, 503]), min_size=1, max_size=3).map(
            tuple
        ),
        data=st.sampled_from([354, 354, 354, 451, 554, 503]),
        eod=st.sampled_from([250, 250, 250, 452, 552]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(plans=plans)
def test_statuses_follow_the_replies_in_any_mix(plans: list[Plan]) -> None:
    conv, done, server = run(plans)
    assert len(done) == len(plans)
    for status, plan in zip(done, plans, strict=True):
        success, code, stage = expected(plan)
        assert (status.success, status.status, status.stage) == (success, code, stage), plan
        for j, rcpt_code in enumerate(plan.rcpts):
            rs = status.recipients[f"r{j}@x.test"]
            if rcpt_code not in (250, 251) or plan.mail != 250:
                assert not rs.accepted and rs.code != 250
    # A body (or, without an accepted recipient, an empty one) ended every DATA the server
    # answered with 354, and no other.
    assert server.bodies == sum(1 for p in plans if p.data == 354)
    # Every reply was judged by the table, in order: the session is ready for more.
    assert conv.machine.state is State.READY and not conv.machine.outstanding
    assert conv.usable and not conv.parser.has_data()


def test_a_long_run_of_successes_then_a_refusal() -> None:
    """The shortcut's common case: many hoped-for replies, then one that is not."""
    ok = Plan(250, (250,), 354, 250)
    batch = [ok] * 20 + [Plan(250, (250, 550), 354, 250), ok, Plan(550, (503,), 503, 250), ok]
    conv, done, _ = run(batch)
    assert [s.success for s in done] == [True] * 20 + [False, True, False, True]
    assert done[20].refused == ["r1@x.test"] and done[20].accepted == ["r0@x.test"]
    assert done[22].stage == "mail"
    assert conv.usable


def test_a_recipient_accepted_after_a_refused_mail_stops_the_session() -> None:
    """A reply the table refuses ends the run of hoped-for replies before any body."""
    conv = Conversation(SessionConfig("mx.test", 25, Security.NONE, "client.test"))
    conv.parser.feed(b"220 hi\r\n")
    _pump(conv, conv.handshake(), lambda _written: EHLO)
    ok = Prepared("a@x.test", ("b@x.test",), "<1@x>", lambda: iter([b"Subject: x\r\n\r\nhi\r\n"]))
    wire = bytearray()
    replies = iter(
        [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 end\r\n451 no\r\n250 ok\r\n354 go\r\n"]
    )

    def answer(written: bytes) -> bytes:
        wire.extend(written)
        return next(replies)

    with pytest.raises(ProtocolError, match="unexpected reply to RCPT"):
        _pump(conv, conv.transactions([ok, ok], SendOptions()), answer)
    assert wire.count(b"hi\r\n.\r\n") == 1  # the second body never left
