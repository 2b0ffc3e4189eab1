"""Table tests for the conversation generators, pumped by a scripted in-memory driver."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from postillon.errors import (
    AuthenticationError,
    ProtocolError,
    ReplyError,
    ServerDisconnected,
    TLSError,
)
from postillon.message.prepared import Prepared
from postillon.protocol.conversation import (
    FLUSH,
    READ,
    START_TLS,
    TABLE,
    Cmd,
    Conversation,
    Done,
    Machine,
    ReadUpTo,
    SendOptions,
    SessionConfig,
    State,
    Write,
    WriteBody,
    check_status,
    failure_status,
)
from postillon.protocol.reply import Reply
from postillon.settings import AuthMode, Dsn, Security
from postillon.status import SendStatus

EHLO_FULL = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 PIPELINING\r\n"


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {
        "host": "mx.test",
        "port": 25,
        "security": Security.NONE,
        "local_hostname": "client.test",
    }
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


def msg(
    body: bytes = b"Subject: x\r\n\r\nhello\r\n",
    rcpts: tuple[str, ...] = ("b@x.test",),
    **kw: object,
) -> Prepared:
    return Prepared("a@x.test", rcpts, "<id@x>", lambda: iter([body]), **kw)  # type: ignore[arg-type]


class Script:
    """Pumps a flow; each READ takes the next scripted server chunk."""

    def __init__(self, conv: Conversation, replies: list[bytes]) -> None:
        self.conv = conv
        self.replies = list(replies)
        self.written = bytearray()
        self.done: list[SendStatus] = []
        self.tls_started = 0

    def run(self, flow: Iterator[object]) -> Script:
        gen = flow
        answer = None
        while True:
            try:
                req = gen.send(answer)  # type: ignore[attr-defined]
            except StopIteration:
                return self
            answer = None
            if isinstance(req, Write):
                self.written += req.data
            elif isinstance(req, WriteBody):
                for chunk in req.chunks:
                    self.written += chunk
            elif req is READ or isinstance(req, ReadUpTo):
                reply = self.conv.parser.next_reply()
                while reply is None:
                    if not self.replies:
                        raise ServerDisconnected("script exhausted")
                    self.conv.parser.feed(self.replies.pop(0))
                    reply = self.conv.parser.next_reply()
                answer = at_hand(self.conv, reply, req)
            elif req is START_TLS:
                self.tls_started += 1
            elif req is FLUSH:
                pass
            elif isinstance(req, Done):
                self.done.append(req.status)
            else:  # pragma: no cover
                raise AssertionError(req)


def at_hand(conv: Conversation, first: Reply, req: object) -> Reply | list[Reply]:
    """The answer to READ (``first``) or to ReadUpTo(n) (``first`` and those parsed
    after it, n at most), as the drivers give it."""
    if not isinstance(req, ReadUpTo):
        return first
    out = [first]
    while len(out) < req.n and (more := conv.parser.next_reply()) is not None:
        out.append(more)
    return out


def opened(replies: list[bytes], **kw: object) -> tuple[Conversation, Script]:
    conv = Conversation(cfg(**kw))
    script = Script(conv, [b"220 hi\r\n", *replies])
    script.run(conv.handshake())
    return conv, script


# ------------------------------------------------------------------ state table


def test_table_covers_every_reachable_pair() -> None:
    # Every rule's next and fail states are states; every command has a rule somewhere.
    assert {cmd for (_, cmd) in TABLE} == set(Cmd)
    for rule in TABLE.values():
        assert isinstance(rule.next, State) and isinstance(rule.fail, State)


def test_machine_unsolicited_and_bug_guard() -> None:
    m = Machine()
    with pytest.raises(ProtocolError, match="unsolicited"):
        m.received(Reply(250, ("x",)))
    m.sent(Cmd.MAIL)  # MAIL before the greeting: our bug, not the server's
    with pytest.raises(RuntimeError):
        m.received(Reply(250, ("x",)))


def test_machine_unexpected_code_is_protocol_error() -> None:
    m = Machine()
    m.state = State.MAIL
    m.sent(Cmd.RCPT)
    with pytest.raises(ProtocolError, match="unexpected reply to RCPT"):
        m.received(Reply(354, ("go",)))  # R10


def test_machine_421_closes() -> None:
    m = Machine()
    m.state = State.READY
    m.sent(Cmd.MAIL)
    assert m.received(Reply(421, ("bye",)))[1].value == "fail"
    assert m.state is State.CLOSED


# ---------------------------------------------------------------------- session


def test_handshake_ehlo() -> None:
    conv, script = opened([EHLO_FULL])
    assert script.written == b"EHLO client.test\r\n"
    assert conv.capabilities.pipelining and conv.capabilities.size == 1000
    assert conv.usable


def test_greeting_refused() -> None:
    conv = Conversation(cfg())
    with pytest.raises(ReplyError) as err:
        Script(conv, [b"554 go away\r\n"]).run(conv.handshake())
    assert err.value.code == 554 and conv.stage == "greeting"


def test_helo_fallback() -> None:
    conv, script = opened([b"502 what\r\n", b"250 ok\r\n"])
    assert script.written == b"EHLO client.test\r\nHELO client.test\r\n"
    assert not conv.capabilities.esmtp


def test_ehlo_transient_failure_no_fallback() -> None:
    conv = Conversation(cfg())
    with pytest.raises(ReplyError) as err:
        Script(conv, [b"220 hi\r\n", b"421 busy\r\n"]).run(conv.handshake())
    assert err.value.code == 421


def test_starttls_then_new_ehlo_and_injected_bytes_dropped() -> None:
    conv = Conversation(cfg(security=Security.STARTTLS))
    # The STARTTLS answer carries injected lines in the same segment (CVE-2011-0411 class).
    script = Script(
        conv,
        [
            b"220 hi\r\n",
            b"250-mx\r\n250 STARTTLS\r\n",
            b"220 go ahead\r\n250-INJECTED\r\n250 AUTH PLAIN\r\n",
            b"250-mx\r\n250 PIPELINING\r\n",
        ],
    )
    events: list[str] = []
    conv.on_event = events.append
    script.run(conv.handshake())
    assert script.tls_started == 1
    assert conv.tls_active
    assert not conv.capabilities.auth and not conv.capabilities.has("INJECTED")
    assert conv.capabilities.pipelining
    assert script.written.count(b"EHLO") == 2
    assert any("discarded" in e for e in events)


def test_starttls_missing_is_an_error_unless_accepted() -> None:
    conv = Conversation(cfg(security=Security.STARTTLS))
    with pytest.raises(TLSError, match="does not offer STARTTLS"):
        Script(conv, [b"220 hi\r\n", EHLO_PLAIN]).run(conv.handshake())
    conv2, script = opened(
        [EHLO_PLAIN], security=Security.STARTTLS, accept_unsecure_connection=True
    )
    assert not conv2.tls_active and script.tls_started == 0


def test_starttls_refused() -> None:
    conv = Conversation(cfg(security=Security.STARTTLS))
    with pytest.raises(ReplyError) as err:
        Script(conv, [b"220 hi\r\n", b"250-mx\r\n250 STARTTLS\r\n", b"454 no tls\r\n"]).run(
            conv.handshake()
        )
    assert err.value.code == 454 and conv.stage == "starttls"


def test_auth_plain_inline_and_redacted_log() -> None:
    conv = Conversation(cfg(security=Security.TLS, user="u", password="p"))
    logs: list[str] = []
    script = Script(conv, [b"220 hi\r\n", EHLO_FULL, b"235 ok\r\n"])
    gen = conv.handshake()
    answer = None
    while True:
        try:
            req = gen.send(answer)
        except StopIteration:
            break
        answer = None
        if isinstance(req, Write):
            logs.append(req.log)
            script.written += req.data
        elif req is READ:
            conv.parser.feed(script.replies.pop(0))
            answer = conv.parser.next_reply()
    assert conv.auth_mechanism is AuthMode.CRAM_MD5 or b"AUTH" in script.written
    assert all("cA==" not in line and "dQB1AHA" not in line for line in logs)


def test_auth_cram_md5_chosen_and_challenge_answered() -> None:
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>")
    conv, script = opened(
        [EHLO_FULL, b"334 " + challenge + b"\r\n", b"235 ok\r\n"],
        security=Security.TLS,
        user="tim",
        password="tanstaaftanstaaf",
    )
    assert conv.auth_mechanism is AuthMode.CRAM_MD5
    assert base64.b64encode(b"tim b913a602c7eda7a495b4e6e7334d3890") in script.written


def test_auth_failure_raises_authentication_error() -> None:
    conv = Conversation(
        cfg(security=Security.TLS, user="u", password="p", authentication_mode=AuthMode.PLAIN)
    )
    with pytest.raises(AuthenticationError) as err:
        Script(conv, [b"220 hi\r\n", EHLO_FULL, b"535 5.7.8 bad\r\n"]).run(conv.handshake())
    assert err.value.code == 535 and err.value.enhanced_status == "5.7.8"


def test_auth_refused_in_clear() -> None:
    conv = Conversation(cfg(user="u", password="p"))
    script = Script(conv, [b"220 hi\r\n", EHLO_FULL])
    with pytest.raises(AuthenticationError, match="unencrypted"):
        script.run(conv.handshake())
    assert b"AUTH" not in script.written


def test_auth_windev_rule_no_known_mechanism() -> None:
    conv, script = opened(
        [b"250-mx\r\n250 AUTH GSSAPI\r\n"], security=Security.TLS, user="u", password="p"
    )
    assert conv.auth_note and b"AUTH" not in script.written


def test_auth_requested_mechanism_not_offered() -> None:
    conv = Conversation(
        cfg(security=Security.TLS, user="u", password="p", authentication_mode=AuthMode.LOGIN)
    )
    with pytest.raises(AuthenticationError, match="does not offer LOGIN"):
        Script(conv, [b"220 hi\r\n", b"250-mx\r\n250 AUTH PLAIN\r\n"]).run(conv.handshake())


def test_auth_bad_challenge_cancels() -> None:
    conv = Conversation(
        cfg(security=Security.TLS, user="u", password="p", authentication_mode=AuthMode.LOGIN)
    )
    script = Script(conv, [b"220 hi\r\n", EHLO_FULL, b"334 !!notbase64\r\n", b"501 cancelled\r\n"])
    with pytest.raises(AuthenticationError):
        script.run(conv.handshake())
    assert script.written.endswith(b"*\r\n")


def test_auth_login_and_token_callable() -> None:
    calls = []

    def token() -> str:
        calls.append(1)
        return "tok"

    conv, _script = opened(
        [b"250-mx\r\n250 AUTH XOAUTH2 PLAIN\r\n", b"235 ok\r\n"],
        security=Security.TLS,
        user="u",
        access_token=token,
    )
    assert conv.auth_mechanism is AuthMode.XOAUTH2 and calls == [1]


# ------------------------------------------------------------------ transactions


def send(
    conv: Conversation,
    replies: list[bytes],
    messages: list[Prepared],
    opts: SendOptions | None = None,
) -> Script:
    script = Script(conv, replies)
    return script.run(conv.transactions(messages, opts or SendOptions()))


def test_pipelined_single_message() -> None:
    conv, _ = opened([EHLO_FULL])
    script = send(
        conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 2.0.0 queued\r\n"], [msg(size=42)]
    )
    assert script.written.startswith(b"MAIL FROM:<a@x.test> SIZE=42\r\n")
    assert b"RCPT TO:<b@x.test>\r\nDATA\r\n" in script.written
    assert script.written.endswith(b"hello\r\n.\r\n")
    (st,) = script.done
    assert st.success and st.status == 250 and st.enhanced_status == "2.0.0"
    assert st.recipients["b@x.test"].accepted


def test_next_envelope_leaves_before_end_of_data_reply() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = Script(
        conv,
        [
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 one\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 two\r\n",
        ],
    )
    order: list[str] = []
    gen = conv.transactions([msg(), msg()], SendOptions())
    answer = None
    while True:
        try:
            req = gen.send(answer)
        except StopIteration:
            break
        answer = None
        if isinstance(req, Write):
            # one write may hold a pipelined group: one entry per command line
            for line in req.data.split(b"\r\n")[:-1]:
                order.append(line.split(b" ")[0].decode())
        elif isinstance(req, WriteBody):
            order.append("BODY")
            list(req.chunks)
        elif req is READ or isinstance(req, ReadUpTo):
            reply = conv.parser.next_reply()
            while reply is None:
                conv.parser.feed(script.replies.pop(0))
                reply = conv.parser.next_reply()
            answer = at_hand(conv, reply, req)
            order += ["read"] * (len(answer) if isinstance(answer, list) else 1)
        elif isinstance(req, Done):
            script.done.append(req.status)
    # RFC 2920 3.1: MAIL/RCPT/DATA of the second message follow the first body unread.
    first_body = order.index("BODY")
    assert order[first_body + 1 : first_body + 4] == ["MAIL", "RCPT", "DATA"]
    assert [s.status_text for s in script.done] == ["one", "two"]


def test_partial_refusal() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = send(
        conv,
        [b"250 ok\r\n250 ok\r\n550 5.1.1 nobody\r\n354 go\r\n", b"250 ok\r\n"],
        [msg(rcpts=("b@x.test", "c@x.test"))],
    )
    (st,) = script.done
    assert (not st.success and st.status == 550 and st.stage is None) or st.stage == "rcpt"
    assert st.accepted == ["b@x.test"] and st.refused == ["c@x.test"]
    with pytest.raises(Exception) as err:
        st.raise_for_status()
    assert type(err.value).__name__ == "RecipientsRefused"


def test_all_recipients_refused_resets() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = send(
        conv, [b"250 ok\r\n550 no\r\n554 no valid recipients\r\n", b"250 reset\r\n"], [msg()]
    )
    (st,) = script.done
    assert not st.success and st.status == 550 and st.stage == "rcpt"
    assert script.written.endswith(b"RSET\r\n")
    assert conv.usable


def test_data_accepted_without_recipients_is_ended_empty() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = send(conv, [b"250 ok\r\n550 no\r\n354 go\r\n", b"554 no recipients\r\n"], [msg()])
    assert script.written.endswith(b"DATA\r\n.\r\n")
    assert not script.done[0].success


def test_mail_refused() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = send(conv, [b"550 5.7.1 no\r\n503 need mail\r\n503 need mail\r\n"], [msg()])
    (st,) = script.done
    assert st.status == 550 and st.stage == "mail"
    assert st.recipients["b@x.test"].code == 550


def test_data_refused_and_end_of_data_refused() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = send(conv, [b"250 ok\r\n250 ok\r\n451 later\r\n", b"250 reset\r\n"], [msg()])
    assert script.done[0].status == 451 and script.done[0].stage == "data"
    script = send(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"552 too big\r\n"], [msg()])
    assert script.done[0].status == 552 and script.done[0].stage == "data"
    assert not script.done[0].recipients["b@x.test"].accepted


def test_421_mid_batch_raises_and_abort_reports_in_flight() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = Script(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"421 closing\r\n"])
    with pytest.raises(ReplyError) as err:
        script.run(conv.transactions([msg(), msg()], SendOptions()))
    assert err.value.code == 421
    statuses = conv.abort(err.value)
    assert statuses and all(s.status == 421 for s in statuses)


def test_disconnect_after_final_dot_is_uncertain() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = Script(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n"])
    with pytest.raises(ServerDisconnected) as err:
        script.run(conv.transactions([msg()], SendOptions()))
    (st,) = conv.abort(err.value)
    assert st.uncertain and st.status == 0 and st.status_text == "Failed to send email"
    assert st.errors[0].component == "disconnected"


def test_disconnect_before_body_is_not_uncertain() -> None:
    conv, _ = opened([EHLO_PLAIN])
    script = Script(conv, [b"250 ok\r\n"])
    with pytest.raises(ServerDisconnected) as err:
        script.run(conv.transactions([msg()], SendOptions()))
    (st,) = conv.abort(err.value)
    assert not st.uncertain


def test_without_pipelining_one_command_at_a_time() -> None:
    conv, _ = opened([b"250 mx\r\n"])
    script = Script(conv, [b"250 ok\r\n", b"550 no\r\n", b"250 reset\r\n"])
    script.run(conv.transactions([msg()], SendOptions()))
    assert b"DATA" not in script.written  # no accepted recipient: no DATA at all
    conv2, _ = opened([b"250 mx\r\n"])
    script2 = Script(conv2, [b"550 no sender\r\n"])
    script2.run(conv2.transactions([msg()], SendOptions()))
    assert b"RCPT" not in script2.written
    conv3, _ = opened([b"250 mx\r\n"])
    script3 = Script(conv3, [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 done\r\n"])
    script3.run(conv3.transactions([msg()], SendOptions()))
    assert script3.done[0].success


def test_prechecks_refuse_before_mail() -> None:
    conv, _ = opened([b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n"])
    script = send(
        conv, [], [msg(size=11), msg(needs_smtputf8=True), msg(eight_bit=True)], SendOptions()
    )
    assert [s.status for s in script.done] == [552, 553, 554]
    assert script.written == b""
    script = send(conv, [], [msg()], SendOptions(require_tls=True))
    assert script.done[0].status == 530 and script.done[0].enhanced_status == "5.7.10"


def test_dsn_parameters() -> None:
    conv, _ = opened([EHLO_FULL])
    opts = SendOptions(dsn=Dsn(notify=("FAILURE", "DELAY"), ret="HDRS", envid="id+1 x"))
    send(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"], [msg()], opts)
    # written holds the whole exchange
    conv2, _ = opened([EHLO_FULL])
    script = send(conv2, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"], [msg()], opts)
    assert b"RET=HDRS" in script.written and b"ENVID=id+2B1+20x" in script.written
    assert b"NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@x.test" in script.written


def test_chunking_uses_bdat() -> None:
    conv, _ = opened([b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"])
    script = send(conv, [b"250 ok\r\n250 ok\r\n", b"250 done\r\n"], [msg(body=b"a\r\n.b\r\n")])
    assert b"BDAT 7 LAST\r\na\r\n.b\r\n" in script.written  # no dot-stuffing with BDAT
    assert script.done[0].success


def test_chunking_bdat_failure() -> None:
    conv, _ = opened([b"250-mx\r\n250 CHUNKING\r\n"])
    script = send(conv, [b"250 ok\r\n", b"250 ok\r\n", b"554 rejected\r\n"], [msg()])
    assert script.done[0].status == 554 and script.done[0].stage == "data"


def test_status_passthrough_keeps_order() -> None:
    conv, _ = opened([EHLO_PLAIN])
    failed = failure_status(ProtocolError("x"), "message")
    script = send(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 one\r\n"], [msg(), failed])  # type: ignore[list-item]
    assert [s.status_text for s in script.done] == ["one", "Failed to send email"]


def test_unsolicited_extra_reply_is_protocol_error() -> None:
    conv, _ = opened([EHLO_PLAIN])
    with pytest.raises(ProtocolError, match="nobody asked"):
        send(
            conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 done\r\n250 extra\r\n"], [msg()]
        )  # R11


def test_invalid_envelope_in_batch_fails_alone() -> None:
    conv, _ = opened([EHLO_PLAIN])
    bad = Prepared("a@x.test", ("bad\r\nRCPT TO:<evil@x>",), "<i>", lambda: iter([b"x"]))
    script = send(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"], [bad, msg()])
    assert script.done[0].stage == "message" and script.done[1].success
    assert b"evil" not in script.written


def test_noop_reset_quit_and_check_status() -> None:
    conv, _ = opened([EHLO_PLAIN])
    Script(conv, [b"250 ok\r\n"]).run(conv.noop())
    st = check_status(True, conv.last_reply, "note")
    assert st.success and st.status == 250 and "note" in st.status_text
    Script(conv, [b"250 reset\r\n"]).run(conv.reset())
    with pytest.raises(ReplyError):
        Script(conv, [b"500 no\r\n"]).run(conv.noop())
    script = Script(conv, [b"221 bye\r\n"]).run(conv.quit())
    assert script.written == b"QUIT\r\n" and conv.machine.state is State.CLOSED
    Script(conv, []).run(conv.quit())  # a closed session says nothing more
    bad = check_status(False, None, exc=ServerDisconnected("gone"), stage="greeting")
    assert bad.status == 0 and bad.errors[0].component == "disconnected"


def test_long_token_goes_after_an_empty_334() -> None:
    token = "t" * 900  # an OAuth token long enough to push AUTH past 512 octets
    conv, script = opened(
        [b"250-mx\r\n250 AUTH XOAUTH2\r\n", b"334 \r\n", b"235 ok\r\n"],
        security=Security.TLS,
        user="u",
        access_token=lambda: token,
    )
    first, second = bytes(script.written).split(b"\r\n")[1:3]
    assert first == b"AUTH XOAUTH2"
    assert base64.b64decode(second) == b"user=u\x01auth=Bearer " + token.encode() + b"\x01\x01"
    assert conv.auth_mechanism is AuthMode.XOAUTH2


def test_scram_without_server_proof_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import postillon.protocol.sasl as sasl

    nonce = "rOprNGfwEbeRWgbNEkqO"
    monkeypatch.setattr(sasl.secrets, "token_urlsafe", lambda n: nonce)
    server_first = (
        b"r=" + nonce.encode() + b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    conv = Conversation(
        cfg(
            security=Security.TLS,
            user="user",
            password="pencil",
            authentication_mode=AuthMode.SCRAM_SHA_256,
        )
    )
    script = Script(
        conv,
        [
            b"220 hi\r\n",
            b"250-mx\r\n250 AUTH SCRAM-SHA-256\r\n",
            b"334 " + base64.b64encode(server_first) + b"\r\n",
            b"235 ok\r\n",
        ],
    )
    with pytest.raises(AuthenticationError, match="proving"):
        script.run(conv.handshake())


def test_message_taken_ahead_is_given_back_when_the_session_breaks() -> None:
    conv, _ = opened([EHLO_PLAIN])
    m1, m2, m3 = msg(), msg(rcpts=("c@x.test",)), msg(rcpts=("d@x.test",))
    # m1 is answered up to its 354; the connection drops before the end of its body
    # is answered, while m2's envelope is out and m3 was taken to follow it.
    script = Script(conv, [b"250 ok\r\n250 ok\r\n354 go\r\n"])
    with pytest.raises(ServerDisconnected) as err:
        script.run(conv.transactions(iter([m1, m2, m3]), SendOptions()))
    reported = conv.abort(err.value)
    assert [list(s.recipients) for s in reported] == [["b@x.test"], ["c@x.test"]]
    assert reported[0].uncertain and not reported[1].uncertain
    assert list(conv.untaken()) == [m3]
    assert list(conv.untaken()) == []  # given back once
