"""Command serialisation: injection (security.md 1.2, 3.6 rows 5, 6, 9, 20, 23, 36, 37),
mailbox grammar (RFC 5321 4.1.2), xtext (RFC 3461 4), length limits (RFC 5321 4.5.3.1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postillon.errors import InvalidMessage
from postillon.protocol import commands as c

CONTROLS = [chr(i) for i in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"]


def ids(chars: list[str]) -> list[str]:
    return [f"U+{ord(ch):04X}" for ch in chars]


# -- check_no_controls -----------------------------------------------------------------


@pytest.mark.parametrize("ch", CONTROLS, ids=ids(CONTROLS))
def test_check_no_controls_refuses_every_control(ch: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        c.check_no_controls(f"ab{ch}cd", "somefield")
    assert info.value.field == "somefield"
    assert "offset 2" in str(info.value)
    assert ch not in str(info.value)


@pytest.mark.parametrize("value", ["", "plain", "caf\u00e9", "\u00a0", "\u0084x\u0086", "~"])
def test_check_no_controls_accepts(value: str) -> None:
    c.check_no_controls(value, "f")


def test_check_no_controls_type() -> None:
    with pytest.raises(InvalidMessage, match="must be a str") as info:
        c.check_no_controls(b"x", "f")  # type: ignore[arg-type]
    assert info.value.field == "f"


# -- every command refuses controls in every argument ------------------------------------

BUILDERS: list[tuple[str, Callable[[str], bytes]]] = [
    ("mail_from.address", lambda v: c.mail_from(f"a{v}@b.com")),
    ("mail_from.param", lambda v: c.mail_from("a@b.com", [f"X{v}RSET"])),
    ("rcpt_to.address", lambda v: c.rcpt_to(f"a@b{v}.com")),
    ("rcpt_to.param", lambda v: c.rcpt_to("a@b.com", [f"NOTIFY=NEVER{v}"])),
    ("ehlo", lambda v: c.ehlo(f"host{v}.example.com")),
    ("helo", lambda v: c.helo(f"host{v}")),
    ("auth.mechanism", lambda v: c.auth(f"PLAIN{v}")),
    ("auth.initial", lambda v: c.auth("PLAIN", f"AAAA{v}")),
    ("auth_response", lambda v: c.auth_response(f"dXNl{v}")),
    ("esmtp_param.key", lambda v: c.esmtp_param(f"K{v}", "x").encode()),
    ("esmtp_param.value", lambda v: c.esmtp_param("K", f"x{v}").encode()),
    ("xtext", lambda v: c.xtext(f"id{v}").encode()),
]


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[b[0] for b in BUILDERS])
@pytest.mark.parametrize("ch", ["\r\n", "\r", "\n", "\x00", "\t", "\x0b", "\x1b", "\x7f", "\u2028"])
def test_row9_controls_refused_in_every_argument(
    name: str, build: Callable[[str], bytes], ch: str
) -> None:
    with pytest.raises(InvalidMessage):
        build(ch)


def test_row5_sender_with_crlf_rcpt() -> None:
    with pytest.raises(InvalidMessage) as info:
        c.mail_from("a@b.com>\r\nRCPT TO:<x@evil>")
    assert info.value.field == "mail_from"


def test_row6_sender_holding_a_whole_smuggled_transaction() -> None:
    # security.md 1.2 (aiosmtplib GHSA-v3q9-hj7j-63hq shape): nothing is produced.
    smuggled = (
        "a@b.com>\r\nRCPT TO:<x@evil.com>\r\nDATA\r\nFrom: ceo@bank.com\r\n\r\n"
        "wire money\r\n.\r\nRSET\r\nMAIL FROM:<c@d.com"
    )
    produced: list[bytes] = []
    with pytest.raises(InvalidMessage):
        produced.append(c.mail_from(smuggled))
    with pytest.raises(InvalidMessage):
        produced.append(c.rcpt_to(smuggled))
    assert produced == []


def test_flask_mail_189_option_lists() -> None:
    with pytest.raises(InvalidMessage):
        c.mail_from("a@b.com", ["X\nRSET"])
    # No control, but a space would smuggle a second parameter.
    with pytest.raises(InvalidMessage, match="bad ESMTP parameter"):
        c.mail_from("a@b.com", ["SIZE=10 NOTIFY=NEVER"])
    with pytest.raises(InvalidMessage, match="bad ESMTP parameter"):
        c.rcpt_to("a@b.com", ["NOTIFY=A=B"])


@pytest.mark.parametrize("params", ["SIZE=10", b"SIZE=10", 42, None])
def test_params_must_be_a_sequence_of_str(params: object) -> None:
    with pytest.raises(InvalidMessage, match="sequence"):
        c.mail_from("a@b.com", params)  # type: ignore[arg-type]


def test_param_item_type_checked() -> None:
    with pytest.raises(InvalidMessage, match="must be a str"):
        c.rcpt_to("a@b.com", [b"SIZE=1"])  # type: ignore[list-item]


# -- mailbox grammar -------------------------------------------------------------------

VALID = [
    "a@example.com",
    "first.last@sub.example.co.uk",
    "a+tag@example.com",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    "x@localhost",
    "x@a-b.example",
    "x@123.example",
    "x@xn--bcher-kva.example",
    '"john doe"@example.com',
    '""@example.com',
    '"a\\"b"@example.com',
    '"a\\\\b"@example.com',
    '"a@evil.com> NOTIFY=NEVER"@good.com',  # row 20: valid, one token, to good.com
    '"foo@psres.net> ORCPT=admin@admin.com"@test.com',
    "x@[192.0.2.1]",
    "x@[IPv6:2001:db8::1]",
    "x@[ipv6:::1]",
    "x@[IPv6:::ffff:192.0.2.1]",
    "a" * 64 + "@example.com",
    "x@" + ".".join(["a" * 63] * 3) + "." + "b" * 59,  # 2 + 251 = 253
]


@pytest.mark.parametrize("address", VALID)
def test_valid_mailboxes_are_returned_unchanged(address: str) -> None:
    assert c.mailbox(address, field="to", smtputf8=False) is address
    assert c.rcpt_to(address) == f"RCPT TO:<{address}>\r\n".encode()


INVALID = [
    ("", "empty address"),
    ("plainaddress", "no '@'"),
    ("@example.com", "empty local part"),
    (".a@example.com", "empty atom"),
    ("a.@example.com", "empty atom"),
    ("a..b@example.com", "empty atom"),
    ("a b@example.com", "not allowed"),
    ("a(b)@example.com", "not allowed"),
    ("a>@example.com", "not allowed"),
    ("a<b@example.com", "not allowed"),
    ("a\\b@example.com", "not allowed"),
    ('a"b@example.com', "not allowed"),
    ("a@", "empty domain"),
    ("a@b@c.com", "bad domain label"),  # row 21
    ("user@good.com(x)evil.com", "bad domain label"),  # row 21
    ("a@-example.com", "bad domain label"),
    ("a@example-.com", "bad domain label"),
    ("a@example..com", "bad domain label"),
    ("a@example.com.", "bad domain label"),
    ("a@exa_mple.com", "bad domain label"),
    ("a@" + "b" * 64 + ".com", "bad domain label"),
    ("a@example.com> NOTIFY=NEVER", "bad domain label"),
    ('"unterminated@example.com', "unterminated"),
    ('"a"b@example.com', "followed by '@'"),
    ('"a"', "followed by '@'"),
    ('"a\\', "backslash"),
    ('"a\\\u00e9"@example.com', "non-ASCII"),
    ("a@[192.0.2.1", "unterminated address literal"),
    ("a@[]", "unterminated address literal"),
    ("a@[300.1.1.1]", "bad address literal"),
    ("a@[192.0.2.01]", "bad address literal"),
    ("a@[IPv6:zz::1]", "bad address literal"),
    ("a@[IPv6:fe80::1%eth0]", "bad address literal"),
    ("a@[2001:db8::1]", "bad address literal"),
    ("a@[tag:whatever]", "bad address literal"),
    ("a" * 65 + "@example.com", "64 octets"),  # row 23
    ("x@" + ".".join(["a" * 63] * 4) + "a", "255 octets"),  # row 23: domain of 256
    ("a" * 64 + "@" + ".".join(["b" * 63] * 3) + "." + "c" * 61, "254 octets"),  # path
    ("j\u00f6rg@example.com", "SMTPUTF8"),  # row 17
    ("a@b\u00fccher.example", "SMTPUTF8"),
    ("a@\ud800.com", "surrogate"),
]


@pytest.mark.parametrize(("address", "why"), INVALID)
def test_invalid_mailboxes(address: str, why: str) -> None:
    with pytest.raises(InvalidMessage, match=why) as info:
        c.mailbox(address, field="to", smtputf8=False)
    assert info.value.field == "to"


def test_row23_lengths_exactly_at_the_limits() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 63] * 3) + "." + "c" * 61  # 253 octets
    assert len(domain) == 253
    with pytest.raises(InvalidMessage, match="254 octets"):
        c.mailbox(f"{local}@{domain}", field="to", smtputf8=False)
    # "<" + 254 octets + ">" is the longest path (RFC 5321 4.5.3.1.3).
    longest = f"{local}@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61
    assert len(longest) == 254
    assert c.rcpt_to(longest) == f"RCPT TO:<{longest}>\r\n".encode()
    with pytest.raises(InvalidMessage, match="254 octets"):
        c.rcpt_to(longest[:-1] + "dd")


def test_null_path() -> None:
    assert c.mailbox("", field="mail_from", smtputf8=False, allow_null=True) == ""
    assert c.mail_from("") == b"MAIL FROM:<>\r\n"
    with pytest.raises(InvalidMessage, match="empty address"):
        c.rcpt_to("")


def test_mailbox_type_checked() -> None:
    with pytest.raises(InvalidMessage, match="must be a str"):
        c.mailbox(None, field="to", smtputf8=False)  # type: ignore[arg-type]


SMTPUTF8_VALID = [
    "j\u00f6rg@example.com",  # row 18
    "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
    "a@b\u00fccher.example",
    '"\u00e9 t\u00e9"@example.com',
    "a@\u0915\u094d\u200d\u0937.example",  # ZWJ allowed in context
    "\u00e9.\u00e8@example.com",
]


@pytest.mark.parametrize("address", SMTPUTF8_VALID)
def test_smtputf8_mailboxes(address: str) -> None:
    assert c.mailbox(address, field="to", smtputf8=True) == address
    assert c.mail_from(address, ["SMTPUTF8"], smtputf8=True) == (
        f"MAIL FROM:<{address}> SMTPUTF8\r\n".encode()
    )
    with pytest.raises(InvalidMessage, match="SMTPUTF8"):
        c.mail_from(address, ["SMTPUTF8"])


SMTPUTF8_INVALID = [
    ("a\u00a0b@example.com", "U\\+00A0"),  # no-break space
    ("a@b\u3000c.example", "U\\+3000"),  # ideographic space
    ("a\u202eb@example.com", "U\\+202E"),  # bidi override
    ("a@\u202egood.example", "U\\+202E"),
    ("a@\ud800.example", "surrogate"),
    ("\ud800@example.com", "surrogate"),
    ('"\u00a0"@example.com', "U\\+00A0"),
    ("a@-b\u00fc.example", "bad domain label"),
    ("a@b\u00fc-.example", "bad domain label"),
    ("a@b\u00fc_c.example", "bad domain label"),
    ("a@" + "\u00fc" * 32 + ".example", "bad domain label"),  # 64 octets
    ("a@\u0378x.example", "U\\+0378"),  # unassigned
]


@pytest.mark.parametrize(("address", "why"), SMTPUTF8_INVALID)
def test_smtputf8_invalid(address: str, why: str) -> None:
    with pytest.raises(InvalidMessage, match=why):
        c.mailbox(address, field="to", smtputf8=True)


def test_row20_quoted_local_part_is_never_split() -> None:
    address = '"a@evil.com> NOTIFY=NEVER"@good.com'
    line = c.rcpt_to(address, ["NOTIFY=FAILURE"])
    assert line == b'RCPT TO:<"a@evil.com> NOTIFY=NEVER"@good.com> NOTIFY=FAILURE\r\n'
    # The path ends at the last ">" before our own parameters: one path, one parameter.
    path, _, params = line.rstrip(b"\r\n").rpartition(b"> ")
    assert path.endswith(b"@good.com") and params == b"NOTIFY=FAILURE"


# -- MAIL / RCPT -----------------------------------------------------------------------


def test_mail_from_with_params() -> None:
    params = [
        c.esmtp_param("SIZE", "1200"),
        c.esmtp_param("BODY", "8BITMIME"),
        c.esmtp_param("RET", "HDRS"),
        c.esmtp_param("ENVID", c.xtext("id 1+2=3")),
        c.esmtp_param("REQUIRETLS"),
    ]
    assert c.mail_from("a@example.com", params) == (
        b"MAIL FROM:<a@example.com> SIZE=1200 BODY=8BITMIME RET=HDRS "
        b"ENVID=id+201+2B2+3D3 REQUIRETLS\r\n"
    )


def test_rcpt_to_with_dsn_params() -> None:
    orcpt = "rfc822;" + c.xtext("b+x@example.com")
    line = c.rcpt_to("b+x@example.com", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=" + orcpt])
    assert line == (
        b"RCPT TO:<b+x@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\n"
    )


@pytest.mark.parametrize("name", ["postmaster", "Postmaster", "POSTMASTER"])
def test_rcpt_to_postmaster(name: str) -> None:
    assert c.rcpt_to(name) == f"RCPT TO:<{name}>\r\n".encode()
    with pytest.raises(InvalidMessage):
        c.mail_from(name)


def test_line_limits_512_and_2048() -> None:
    long_local = "a" * 64
    domain = ".".join(["b" * 63] * 2) + "." + "c" * 50
    address = f"{long_local}@{domain}"
    assert len(c.rcpt_to(address)) <= 512
    # Parameters allow up to 2048 octets, and no more.
    param = "X-LONG=" + "v" * 1500
    line = c.mail_from(address, [param])
    assert 512 < len(line) <= 2048
    with pytest.raises(InvalidMessage, match="exceeds 2048") as info:
        c.mail_from(address, [param, "X-MORE=" + "v" * 600])
    assert info.value.field == "mail_from"


def test_line_limit_512_without_params() -> None:
    # A bare command is bounded by 512: an over-long name can never produce one.
    with pytest.raises(InvalidMessage, match="exceeds 512"):
        c.auth("PLAIN", "A" * 600)


# -- xtext (row 37) and esmtp_param ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("simple", "simple"),
        ("a b", "a+20b"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("!~", "!~"),
        ("caf\u00e9", "caf+C3+A9"),
        ("\u20ac", "+E2+82+AC"),
        ("", ""),
        ("<id@host>", "<id@host>"),
    ],
)
def test_xtext(value: str, expected: str) -> None:
    assert c.xtext(value) == expected
    assert c.esmtp_param("ENVID", expected or "x")  # always a valid esmtp-value


@pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "\x00", "a\tb"])
def test_xtext_refuses_controls(value: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        c.xtext(value, field="dsn.envid")
    assert info.value.field == "dsn.envid"


def test_xtext_refuses_lone_surrogate() -> None:
    with pytest.raises(InvalidMessage, match="surrogate"):
        c.xtext("\udcff")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("SIZE", "1000", "SIZE=1000"),
        ("SMTPUTF8", None, "SMTPUTF8"),
        ("X-Y", "a;b,c", "X-Y=a;b,c"),
        ("8BITMIME", None, "8BITMIME"),
    ],
)
def test_esmtp_param(key: str, value: str | None, expected: str) -> None:
    assert c.esmtp_param(key, value) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("", None),
        ("-X", None),
        ("A B", None),
        ("A=B", None),
        ("K\u00e9", None),
        ("SIZE", ""),
        ("SIZE", "1 2"),
        ("SIZE", "a=b"),
        ("SIZE", "\u00e9"),
        ("SIZE", "\x7f"),
    ],
)
def test_esmtp_param_invalid(key: str, value: str | None) -> None:
    with pytest.raises(InvalidMessage) as info:
        c.esmtp_param(key, value)
    assert info.value.field == "params"


# -- EHLO / HELO (row 36) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["client.example.com", "localhost", "a", "[192.0.2.1]", "[IPv6:2001:db8::7]", "x-1.example"],
)
def test_ehlo_and_helo(name: str) -> None:
    assert c.check_ehlo_name(name) == name
    assert c.ehlo(name) == f"EHLO {name}\r\n".encode()
    assert c.helo(name) == f"HELO {name}\r\n".encode()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "my host",
        "host\r\nMAIL FROM:<x@evil>",
        "host\x00",
        "-host",
        "host.",
        ".host",
        "a..b",
        "my_pc",
        "h\u00f6st.example",
        "[300.0.0.1]",
        "[192.0.2.1",
        "x" * 256,
        "host@example.com",
    ],
)
def test_row36_bad_ehlo_names(name: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        c.ehlo(name)
    assert info.value.field == "local_hostname"
    with pytest.raises(InvalidMessage):
        c.helo(name)


def test_ehlo_name_type() -> None:
    with pytest.raises(InvalidMessage, match="must be a str"):
        c.ehlo(None)  # type: ignore[arg-type]


# -- AUTH -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("PLAIN", "AHVzZXIAcGFzcw=="), b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"),
        (("PLAIN", ""), b"AUTH PLAIN =\r\n"),  # RFC 4954 4: empty initial response
        (("LOGIN",), b"AUTH LOGIN\r\n"),
        (("login", None), b"AUTH LOGIN\r\n"),
        (("scram-sha-256", "bj1="), b"AUTH SCRAM-SHA-256 bj1=\r\n"),
        (("XOAUTH2", "dXNlcj0="), b"AUTH XOAUTH2 dXNlcj0=\r\n"),
    ],
)
def test_auth(args: tuple[str, ...], expected: bytes) -> None:
    assert c.auth(*args) == expected


@pytest.mark.parametrize(
    ("mechanism", "initial", "field"),
    [
        ("", None, "authentication_mode"),
        ("PL AIN", None, "authentication_mode"),
        ("A" * 21, None, "authentication_mode"),
        ("PL\u00c4IN", None, "authentication_mode"),
        ("PLAIN", "not base64!", "initial_response"),
        ("PLAIN", "abc def", "initial_response"),
        ("PLAIN", "=abc", "initial_response"),
        ("PLAIN", "abc===", "initial_response"),
        ("PLAIN", "*", "initial_response"),
    ],
)
def test_auth_invalid(mechanism: str, initial: str | None, field: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        c.auth(mechanism, initial)
    assert info.value.field == field


def test_auth_errors_never_echo_the_credentials() -> None:
    secret = "c2VjcmV0LXBhc3N3b3Jk"
    for bad in (secret + " x", secret + "\r\n", secret + "!"):
        with pytest.raises(InvalidMessage) as info:
            c.auth("PLAIN", bad)
        assert secret not in str(info.value) and secret not in repr(info.value)
    with pytest.raises(InvalidMessage) as info:
        c.auth("PLAIN", "A" * 600)
    assert "AAAA" not in str(info.value)


def test_auth_fits() -> None:
    assert c.auth_fits("PLAIN", None)
    assert c.auth_fits("PLAIN", "")
    # "AUTH XOAUTH2 " + initial + CRLF: 13 + n + 2 <= 512
    assert c.auth_fits("XOAUTH2", "A" * 497)
    assert len(c.auth("XOAUTH2", "A" * 497)) == 512
    assert not c.auth_fits("XOAUTH2", "A" * 498)
    with pytest.raises(InvalidMessage, match="exceeds 512"):
        c.auth("XOAUTH2", "A" * 498)


def test_auth_response() -> None:
    assert c.auth_response("dXNlcg==") == b"dXNlcg==\r\n"
    assert c.auth_response("") == b"\r\n"
    long = "QUJD" * 5000  # no line limit on responses (RFC 4954 4)
    assert c.auth_response(long) == long.encode() + b"\r\n"
    with pytest.raises(InvalidMessage) as info:
        c.auth_response("*")
    assert info.value.field == "sasl_response"
    assert c.SASL_CANCEL == b"*\r\n"


# -- BDAT and constants -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "last", "expected"),
    [
        (0, True, b"BDAT 0 LAST\r\n"),
        (0, False, b"BDAT 0\r\n"),
        (1048576, False, b"BDAT 1048576\r\n"),
        (86, True, b"BDAT 86 LAST\r\n"),
    ],
)
def test_bdat(size: int, last: bool, expected: bytes) -> None:
    assert c.bdat(size, last) == expected


@pytest.mark.parametrize("size", [-1, 1.5, "10", True, None])
def test_bdat_invalid(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        c.bdat(size)  # type: ignore[arg-type]


def test_constants() -> None:
    assert (c.DATA, c.RSET, c.NOOP, c.QUIT, c.STARTTLS) == (
        b"DATA\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"STARTTLS\r\n",
    )
    assert (c.MAX_COMMAND_LINE, c.MAX_COMMAND_LINE_WITH_PARAMS) == (512, 2048)
