"""security.md 3.6, malformed server replies R1-R14, end to end through both transporters.

tests/protocol checks the reply parser and the capability table on bytes; here every row
goes through ``send()`` against a raw scripted server, so the driver, the conversation and
the status all take part. Failures must be temporary (status 0 or 4xx), bounded in time
and memory, and leave no connection in an unknown state.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from postillon import RawMessage, Security

from ._support import FaultServer
from support.script import SMTP_DEFAULTS, close, expect, read_until, send, sleep

RAW = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: hi\r\nMessage-ID: <r@x.test>\r\n\r\nhello\r\n"
MSG = RawMessage(RAW, "a@x.test", ["b@x.test"])


def replies(**override: bytes | list[bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = dict(SMTP_DEFAULTS)
    out.update(override)
    return out


def assert_temporary(st: Any, component: str = "protocol") -> None:
    assert not st.success, st
    assert st.status == 0 or 400 <= st.status < 500, st
    if st.status == 0:
        assert st.errors[0].component == component, st.errors


def plain(client: Any, server: Any, **kw: Any) -> Any:
    return client(server.host, server.port, security=Security.NONE, **kw)


@pytest.mark.parametrize("chunk", ["whole", "byte"])
def test_R1_lf_only_replies_everywhere(script_server: Any, client: Any, chunk: str) -> None:
    lf = {k: v.replace(b"\r\n", b"\n") for k, v in SMTP_DEFAULTS.items() if isinstance(v, bytes)}
    server = script_server(default_replies=lf, chunk=chunk)
    st = plain(client, server).send(MSG)
    assert st.success and st.status == 250, st


def test_R2_code_only_replies_everywhere(script_server: Any, client: Any) -> None:
    bare = {k: v[:3] + b"\r\n" for k, v in SMTP_DEFAULTS.items() if isinstance(v, bytes)}
    server = script_server(default_replies=bare, chunk="byte")
    st = plain(client, server).send(MSG)
    assert st.success and st.status == 250 and st.status_text == "", st


@pytest.mark.parametrize("greeting", [b"25 ok\r\n", b"2500 ok\r\n", b"abc\r\n", b"099 x\r\n"])
def test_R3_malformed_greeting(script_server: Any, client: Any, greeting: bytes) -> None:
    server = script_server([send(greeting), sleep(0.3), close()], chunk="byte")
    c = plain(client, server)
    st = c.send(MSG)
    assert_temporary(st)
    assert st.stage == "greeting"
    assert server.lines == []  # nothing was said to a server that cannot speak SMTP


def test_R3_empty_line_before_greeting_is_refused(script_server: Any, client: Any) -> None:
    # Decision (security.md R3 asks to decide and test): a line without a code is a
    # protocol error wherever it comes, before the greeting too. Tolerating it would make
    # garbage silently skippable, which smtp_chat.c warns can pair replies wrongly.
    server = script_server([send(b"\r\n220 hi\r\n"), sleep(0.3), close()])
    st = plain(client, server).send(MSG)
    assert_temporary(st)
    assert server.lines == []


@pytest.mark.parametrize("chunk", ["whole", "byte"])
def test_R4_mismatched_multiline_codes_in_ehlo(script_server: Any, client: Any, chunk: str) -> None:
    server = script_server(default_replies=replies(EHLO=b"250-a\r\n451 b\r\n"), chunk=chunk)
    st = plain(client, server).send(MSG)
    assert_temporary(st)
    assert st.stage == "ehlo"
    assert not any(line.startswith(b"MAIL") for line in server.lines)


def test_R5_invalid_utf8_text_accepted_and_escaped(
    script_server: Any, client: Any, log_capture: Any, tmp_path: Path
) -> None:
    log_file = tmp_path / "smtp.log"
    server = script_server(default_replies=replies(EOD=b"250 queued \xff\xfe as X\r\n"))
    c = plain(client, server, log_file=str(log_file))
    st = c.send(MSG)
    c.close()
    assert st.success and st.status == 250, st
    assert "\ufffd" in st.status_text and "queued" in st.status_text
    assert "\xff" not in log_capture.text and "\xfe" not in log_capture.text
    assert b"\xff" not in log_file.read_bytes()


def _bounded(c: Any, seconds: float = 3.0, megabytes: float = 12.0) -> Any:
    tracemalloc.start()
    began = time.monotonic()
    try:
        st = c.send(MSG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - began < seconds
    assert peak < megabytes * 2**20, f"peak {peak / 2**20:.1f} MiB"
    return st


def test_R6_one_megabyte_reply_line(script_server: Any, client: Any) -> None:
    server = script_server(default_replies=replies(MAIL=b"250 " + b"x" * 2**20 + b"\r\n"))
    st = _bounded(plain(client, server))
    assert_temporary(st)
    assert st.stage == "mail"


def test_R7_ten_megabytes_without_newline(script_server: Any, client: Any) -> None:
    server = script_server([send(b"220" + b"-" * (10 * 2**20))], step_timeout=2)
    st = _bounded(plain(client, server))
    assert_temporary(st)
    assert st.stage == "greeting"


def test_R8_a_million_continuation_lines(script_server: Any, client: Any) -> None:
    flood = b"250-x\r\n" * 1_000_000 + b"250 ok\r\n"
    server = script_server([send(b"220 hi\r\n"), expect(b"EHLO"), send(flood)], step_timeout=2)
    st = _bounded(plain(client, server), seconds=4.0)
    assert_temporary(st)
    assert st.stage == "ehlo"


def test_R9_trickled_final_reply_hits_the_deadline_and_is_uncertain(
    script_server: Any, client: Any
) -> None:
    server = script_server(
        [
            send(b"220 hi\r\n"), expect(b"EHLO"), send(b"250 mx\r\n"),
            expect(b"MAIL"), send(b"250 ok\r\n"), expect(b"RCPT"), send(b"250 ok\r\n"),
            expect(b"DATA"), send(b"354 go\r\n"), read_until(),
            send(b"250 2.0.0 queued as ABCDEFGHIJKLMNOP\r\n", mode="byte"),
        ],
        byte_delay=0.2,
    )  # fmt: skip
    c = plain(client, server, send_timeout=1.0)
    began = time.monotonic()
    st = c.send(MSG)
    assert time.monotonic() - began < 2.5  # the deadline of the call, not per byte
    assert_temporary(st, "timeout")
    assert st.uncertain  # the final dot left: the server may hold the message


@pytest.mark.parametrize(
    ("verb", "reply"), [("RCPT", b"354 go ahead\r\n"), ("DATA", b"220 hello again\r\n")]
)
def test_R10_reply_out_of_context(script_server: Any, client: Any, verb: str, reply: bytes) -> None:
    server = script_server(default_replies=replies(**{verb: reply}))
    st = plain(client, server).send(MSG)
    assert_temporary(st)
    assert server.data == []  # no body went after a nonsense answer


@pytest.mark.parametrize("chunk", ["whole", "byte"])
def test_R11_two_replies_to_one_command(script_server: Any, client: Any, chunk: str) -> None:
    # A server without PIPELINING: each command waits for its reply, so the second "250"
    # to MAIL must not be taken as the answer to RCPT.
    server = script_server(
        default_replies=replies(EHLO=b"250 mx\r\n", MAIL=b"250 a\r\n250 b\r\n"), chunk=chunk
    )
    c = plain(client, server)
    st = c.send(MSG)
    assert_temporary(st)
    assert server.data == []
    assert server.connections == 1


@pytest.mark.parametrize("chunk", ["whole", "byte"])
def test_R12_421_inside_a_multiline_reply(server_ssl_context: Any, client: Any, chunk: str) -> None:
    server = FaultServer(
        "MAIL", "garbage", garbage=b"250-first\r\n421 4.3.2 shutting down\r\n",
        close_after=True, chunk=chunk, ssl_context=server_ssl_context,
    ).start()  # fmt: skip
    try:
        c = plain(client, server)
        st = c.send(MSG)
        assert_temporary(st)
        server.disarm()
        # a fresh connection for the next message, which goes through once
        st2 = c.send(MSG)
        assert st2.success, st2
        assert server.connections >= 2 and server.taken == ["<r@x.test>"]
    finally:
        server.stop()


def test_R13_escapes_and_fake_log_lines_in_reply_text(
    script_server: Any, client: Any, log_capture: Any, tmp_path: Path
) -> None:
    evil = b"550-5.7.1 \x1b[2J\x1b[31mcleared\r\n550 5.7.1 2026-01-01 00:00:00 FAKE LOG LINE\r\n"
    refused = b"503 5.5.1 need MAIL\r\n"
    server = script_server(default_replies=replies(MAIL=evil, RCPT=refused, DATA=refused))
    log_file = tmp_path / "smtp.log"
    c = plain(client, server, log_file=str(log_file))
    st = c.send(MSG)
    c.close()
    assert st.status == 550 and not st.success
    exc = st.exception()
    texts = [st.status_text, str(exc), repr(st), log_capture.text]
    for text in texts:
        assert "\x1b" not in text, text
    for line in log_capture.text.splitlines() + log_file.read_text().splitlines():
        assert not line.startswith("550 5.7.1 2026-01-01"), line  # never a line of its own
        assert not line.startswith("2026-01-01 00:00:00 FAKE")
    assert "\x1b" not in log_file.read_text()


def test_R14_absurd_ehlo_values_are_ignored(script_server: Any, client: Any) -> None:
    auth_lines = b"".join(
        b"250-AUTH " + b" ".join(b"%04X" % (i * 1000 + j) for j in range(1000)) + b"\r\n"
        for i in range(10)
    )
    ehlo = (
        b"250-mx\r\n250-SIZE -1\r\n250-SIZE 99999999999999999999\r\n250-PIPELINING\r\n"
        b"250-PIPELINING\r\n250-8BITMIME\r\n" + auth_lines + b"250 SIZE 99999999999999999999\r\n"
    )
    server = script_server(default_replies=replies(EHLO=ehlo))
    c = plain(client, server)
    st = _bounded(c, seconds=3.0)
    assert st.success, st
    mail = [line for line in server.lines if line.startswith(b"MAIL")]
    assert mail and b"SIZE=-" not in mail[0]
