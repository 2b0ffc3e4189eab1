"""SASL flows: RFC vectors (RFC 2195, RFC 4616, RFC 7628, RFC 7677), error challenges,
NUL in credentials (security.md 1.14), mechanism choice (API.md "Authentication")."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest

from postillon.errors import InvalidMessage, ProtocolError
from postillon.protocol import sasl
from postillon.protocol.sasl import (
    MAX_SCRAM_ITERATIONS,
    NO_INITIAL,
    SaslFlow,
    choose_mechanism,
    cram_md5,
    flow_for,
    login,
    oauthbearer,
    plain,
    saslprep,
    scram_sha_256,
    xoauth2,
)
from postillon.settings import AuthMode


def finished(flow: SaslFlow, challenge: bytes = b"more?") -> bool:
    try:
        flow.send(challenge)
    except StopIteration:
        return True
    return False


# -- NO_INITIAL --------------------------------------------------------------------------


def test_no_initial_is_a_distinct_empty_bytes() -> None:
    assert isinstance(NO_INITIAL, bytes) and NO_INITIAL == b""
    assert NO_INITIAL is not b""  # noqa: F632 - identity is the point
    assert repr(NO_INITIAL) == "NO_INITIAL"


# -- PLAIN (RFC 4616) ---------------------------------------------------------------------


def test_plain_exact_bytes() -> None:
    flow = plain("tim", "tanstaaftanstaaf")
    assert next(flow) == b"\x00tim\x00tanstaaftanstaaf"
    assert finished(flow)


def test_plain_with_authzid_and_utf8() -> None:
    flow = plain("j\u00f6rg", "p\u00e4ss", authzid="admin")
    assert next(flow) == b"admin\x00j\xc3\xb6rg\x00p\xc3\xa4ss"


def test_plain_empty_password_is_empty() -> None:
    assert next(plain("u", "")) == b"\x00u\x00"


# -- LOGIN ------------------------------------------------------------------------------------


def test_login_answers_in_order() -> None:
    flow = login("tim", "secret")
    assert next(flow) is NO_INITIAL
    assert flow.send(b"Username:") == b"tim"
    assert flow.send(b"Password:") == b"secret"
    assert finished(flow)


def test_login_ignores_prompt_wording() -> None:
    flow = login("u", "p")
    next(flow)
    assert flow.send(b"Nom d'utilisateur") == b"u"
    assert flow.send(b"") == b"p"


# -- CRAM-MD5 (RFC 2195) ----------------------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    flow = cram_md5("tim", "tanstaaftanstaaf")
    assert next(flow) is NO_INITIAL
    answer = flow.send(b"<1896.697170952@postoffice.reston.mci.net>")
    assert answer == b"tim b913a602c7eda7a495b4e6e7334d3890"
    # On the wire (RFC 2195 example): base64 of the answer
    assert base64.b64encode(answer) == b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
    assert finished(flow)


def test_cram_md5_empty_challenge() -> None:
    flow = cram_md5("tim", "x")
    next(flow)
    with pytest.raises(ProtocolError, match="empty challenge"):
        flow.send(b"")


# -- XOAUTH2 ------------------------------------------------------------------------------------


def test_xoauth2_exact_bytes_and_error_challenge() -> None:
    flow = xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert next(flow) == (
        b"user=someuser@example.com\x01auth=Bearer "
        b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    # Google: a 334 with a base64 JSON error is answered with an empty line -> 535.
    error = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert flow.send(error) == b""
    assert finished(flow)


# -- OAUTHBEARER (RFC 7628) -----------------------------------------------------------------------


def test_oauthbearer_rfc7628_example() -> None:
    flow = oauthbearer(
        "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", "server.example.com", 143
    )
    assert next(flow) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    # RFC 7628 3.2.3: the error challenge is answered with a lone %x01.
    assert flow.send(b'{"status":"invalid_token"}') == b"\x01"
    assert finished(flow)


def test_oauthbearer_escapes_the_authzid_and_allows_no_user() -> None:
    assert next(oauthbearer("a,b=c", "t", "h", 587)).startswith(b"n,a=a=2Cb=3Dc,\x01host=h")
    assert next(oauthbearer("", "t", "h", 587)).startswith(b"n,,\x01host=h\x01port=587\x01")


@pytest.mark.parametrize("port", [0, 65536, -1, "587", True, None])
def test_oauthbearer_port(port: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        oauthbearer("u", "t", "h", port)  # type: ignore[arg-type]
    assert info.value.field == "port"


# -- SCRAM-SHA-256 (RFC 7677, RFC 5802) -------------------------------------------------------------

SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc7677_flow() -> SaslFlow:
    return scram_sha_256("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")


def test_scram_sha_256_rfc7677_example() -> None:
    flow = rfc7677_flow()
    assert next(flow) == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert flow.send(SERVER_FIRST) == CLIENT_FINAL
    assert flow.send(SERVER_FINAL) == b""  # RFC 4954 4: empty answer to the server data
    assert finished(flow)


def test_scram_server_signature_mismatch() -> None:
    flow = rfc7677_flow()
    next(flow)
    flow.send(SERVER_FIRST)
    bad = base64.b64encode(bytes(32))
    with pytest.raises(ProtocolError, match="signature does not match"):
        flow.send(b"v=" + bad)


@pytest.mark.parametrize(
    "final", [b"", b"v=", b"v=!!notbase64", b"x=1", b"v=" + SERVER_FINAL[2:-4]]
)
def test_scram_missing_or_broken_verifier(final: bytes) -> None:
    flow = rfc7677_flow()
    next(flow)
    flow.send(SERVER_FIRST)
    with pytest.raises(ProtocolError):
        flow.send(final)


def test_scram_server_error_in_final_message() -> None:
    flow = rfc7677_flow()
    next(flow)
    flow.send(SERVER_FIRST)
    with pytest.raises(ProtocolError, match="invalid-proof"):
        flow.send(b"e=invalid-proof")


@pytest.mark.parametrize(
    ("server_first", "why"),
    [
        (b"e=unknown-user", "refused: unknown-user"),
        (b"e=\x1b[2Jfake", "refused: \\\\x1b"),  # escaped, never raw
        (b"m=ext," + SERVER_FIRST, "extension"),
        (b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=@@@,i=4096", "salt is not base64"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,i=4096", "salt"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration count of 0"),
        (
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=%d" % (MAX_SCRAM_ITERATIONS + 1),
            "iteration count",
        ),
        (b"garbage", "malformed"),
        (b"rr=x,s=y", "malformed"),
        (b"", "malformed"),
    ],
)
def test_scram_bad_server_first(server_first: bytes, why: str) -> None:
    flow = rfc7677_flow()
    next(flow)
    with pytest.raises(ProtocolError, match=why):
        flow.send(server_first)


def test_scram_with_extension_attribute_and_random_nonce() -> None:
    # A server we simulate here: checks the proof and signs, with an unknown optional
    # attribute "x=" in its first message (RFC 5802 5.1: ignored by the client).
    flow = scram_sha_256("us=er,x", "p\u00e4ss")
    first = next(flow)
    assert first.startswith(b"n,,n=us=3Der=2Cx,r=")
    cnonce = first.split(b",r=", 1)[1]
    assert len(cnonce) >= 24
    salt, rounds = b"salty", 4096
    server_first = b"r=" + cnonce + b"SRV,s=" + base64.b64encode(salt) + b",i=4096,x=ignored"
    final = flow.send(server_first)
    without_proof, _, proof_b64 = final.rpartition(b",p=")
    auth_message = first[3:] + b"," + server_first + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", "p\u00e4ss".encode(), salt, rounds)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored, auth_message, hashlib.sha256).digest()
    recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof_b64), signature, strict=True))
    assert hashlib.sha256(recovered).digest() == stored
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    v = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    assert flow.send(b"v=" + v) == b""


def test_scram_two_flows_use_different_nonces() -> None:
    assert next(scram_sha_256("u", "p")) != next(scram_sha_256("u", "p"))


@pytest.mark.parametrize("nonce", ["", "a,b", "caf\u00e9", "a b", 5])
def test_scram_bad_nonce(nonce: object) -> None:
    with pytest.raises(ValueError, match="nonce"):
        scram_sha_256("u", "p", nonce=nonce)  # type: ignore[arg-type]


def test_scram_password_goes_through_saslprep() -> None:
    # U+00AD (soft hyphen) maps to nothing: "pen\u00adcil" authenticates as "pencil".
    flow = scram_sha_256("user", "pen\u00adcil", nonce="rOprNGfwEbeRWgbNEkqO")
    next(flow)
    assert flow.send(SERVER_FIRST) == CLIENT_FINAL


# -- SASLprep (RFC 4013 3 examples) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to SPACE
        ("\u00ad", ""),
        ("", ""),
        ("\u0627\u0628", "\u0627\u0628"),  # RandALCat only, first and last
        ("\u0221", "\u0221"),  # unassigned in Unicode 3.2: allowed for a query
    ],
)
def test_saslprep(text: str, expected: str) -> None:
    assert saslprep(text, "password") == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("\u0007", "U\\+0007"),  # RFC 4013 3: prohibited character
        ("a\u200eb", "U\\+200E"),  # C.8 change display properties
        ("\ue000", "U\\+E000"),  # private use
        ("\u0627\u0031", "start and end"),  # RFC 4013 3: bidi rule violation
        ("\u0627a\u0628", "mixes"),
    ],
)
def test_saslprep_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidMessage, match=why) as info:
        saslprep(text, "password")
    assert info.value.field == "password"


def test_scram_refuses_prohibited_password_without_echoing_it() -> None:
    with pytest.raises(InvalidMessage) as info:
        scram_sha_256("user", "hunter2\u0007")
    assert "hunter2" not in str(info.value) and info.value.field == "password"


# -- NUL and other bad credentials (security.md 1.14) ------------------------------------------------

NUL_CASES: list[tuple[str, Callable[[], SaslFlow], str]] = [
    ("plain-user", lambda: plain("a\x00b", "p"), "user"),
    ("plain-password", lambda: plain("u", "S3\x00CR3T"), "password"),
    ("plain-authzid", lambda: plain("u", "p", "z\x00"), "authzid"),
    ("login-user", lambda: login("a\x00b", "p"), "user"),
    ("login-password", lambda: login("u", "S3\x00CR3T"), "password"),
    ("cram-user", lambda: cram_md5("a\x00b", "p"), "user"),
    ("cram-password", lambda: cram_md5("u", "S3\x00CR3T"), "password"),
    ("xoauth2-user", lambda: xoauth2("a\x00b", "t"), "user"),
    ("xoauth2-token", lambda: xoauth2("u", "T0\x00K3N"), "access_token"),
    ("xoauth2-token-ctl", lambda: xoauth2("u", "T0\x01K3N"), "access_token"),
    ("xoauth2-user-ctl", lambda: xoauth2("u\x01auth=Bearer x", "t"), "user"),
    ("oauthbearer-user", lambda: oauthbearer("a\x00b", "t", "h", 25), "user"),
    ("oauthbearer-token", lambda: oauthbearer("u", "T0\x00K3N", "h", 25), "access_token"),
    ("oauthbearer-host", lambda: oauthbearer("u", "t", "h\x01port=1", 25), "host"),
    ("scram-user", lambda: scram_sha_256("a\x00b", "p"), "user"),
    ("scram-password", lambda: scram_sha_256("u", "S3\x00CR3T"), "password"),
    ("plain-type", lambda: plain(None, "p"), "user"),  # type: ignore[arg-type]
    ("login-type", lambda: login("u", b"p"), "password"),  # type: ignore[arg-type]
    ("plain-surrogate", lambda: plain("u", "\ud800"), "password"),
    ("oauth-surrogate", lambda: oauthbearer("u", "t", "\udfff", 25), "host"),
]


@pytest.mark.parametrize(("name", "make", "field"), NUL_CASES, ids=[n[0] for n in NUL_CASES])
def test_bad_credentials_refused_before_anything_is_produced(
    name: str, make: Callable[[], SaslFlow], field: str
) -> None:
    # Raised by the call itself, before the flow yields anything.
    with pytest.raises(InvalidMessage) as info:
        make()
    assert info.value.field == field
    text = str(info.value) + repr(info.value)
    assert "CR3T" not in text and "K3N" not in text


# -- flow_for ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "first"),
    [
        (AuthMode.PLAIN, b"\x00u\x00p"),
        (AuthMode.LOGIN, NO_INITIAL),
        (AuthMode.CRAM_MD5, NO_INITIAL),
        (AuthMode.XOAUTH2, b"user=u\x01auth=Bearer t\x01\x01"),
        (
            AuthMode.OAUTHBEARER,
            b"n,a=u,\x01host=mx.example.com\x01port=587\x01auth=Bearer t\x01\x01",
        ),
    ],
)
def test_flow_for(mode: AuthMode, first: bytes) -> None:
    flow = flow_for(mode, user="u", password="p", token="t", host="mx.example.com", port=587)
    got = next(flow)
    assert got == first
    if first is NO_INITIAL:
        assert got is NO_INITIAL


def test_flow_for_scram() -> None:
    flow = flow_for(AuthMode.SCRAM_SHA_256, user="u", password="p", token=None, host="h", port=25)
    assert next(flow).startswith(b"n,,n=u,r=")


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        (AuthMode.PLAIN, "password"),
        (AuthMode.LOGIN, "password"),
        (AuthMode.CRAM_MD5, "password"),
        (AuthMode.SCRAM_SHA_256, "password"),
        (AuthMode.XOAUTH2, "access_token"),
        (AuthMode.OAUTHBEARER, "access_token"),
    ],
)
def test_flow_for_missing_secret(mode: AuthMode, field: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        flow_for(mode, user="u", password=None, token=None, host="h", port=25)
    assert info.value.field == field


def test_flow_for_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        flow_for("PLAIN", user="u", password="p", token=None, host="h", port=25)  # type: ignore[arg-type]


# -- choose_mechanism ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "requested", "password", "token", "expected"),
    [
        (["PLAIN", "LOGIN"], None, True, False, AuthMode.PLAIN),
        (["LOGIN", "PLAIN", "CRAM-MD5"], None, True, False, AuthMode.CRAM_MD5),
        (["LOGIN", "SCRAM-SHA-256", "CRAM-MD5"], None, True, False, AuthMode.SCRAM_SHA_256),
        (["login"], None, True, False, AuthMode.LOGIN),
        (["GSSAPI", "NTLM"], None, True, False, None),
        ([], None, True, False, None),
        (["PLAIN", "XOAUTH2", "OAUTHBEARER"], None, False, True, AuthMode.XOAUTH2),
        (["PLAIN", "OAUTHBEARER"], None, False, True, AuthMode.OAUTHBEARER),
        (["PLAIN", "LOGIN"], None, False, True, None),  # a token only: no password mechanism
        (["PLAIN", "XOAUTH2"], None, True, True, AuthMode.XOAUTH2),  # token first
        (["PLAIN"], None, True, True, AuthMode.PLAIN),
        (["XOAUTH2"], None, True, False, None),  # no token: XOAUTH2 does not fit
        (["PLAIN"], None, False, False, None),
        (["PLAIN", "LOGIN"], AuthMode.LOGIN, True, False, AuthMode.LOGIN),
        (["PLAIN"], AuthMode.LOGIN, True, False, None),  # requested but not offered
        (("plain", "cram-md5"), AuthMode.CRAM_MD5, True, False, AuthMode.CRAM_MD5),
    ],
)
def test_choose_mechanism(
    offered: list[str],
    requested: AuthMode | None,
    password: bool,
    token: bool,
    expected: AuthMode | None,
) -> None:
    got = choose_mechanism(offered, requested=requested, have_password=password, have_token=token)
    assert got is expected


def test_choose_mechanism_validates() -> None:
    with pytest.raises(ValueError, match="offered"):
        choose_mechanism("PLAIN LOGIN", requested=None, have_password=True, have_token=False)
    with pytest.raises(ValueError, match="requested"):
        choose_mechanism(
            ["PLAIN"],
            requested="PLAIN",  # type: ignore[arg-type]
            have_password=True,
            have_token=False,
        )


def test_password_preference_order() -> None:
    assert [m.value for m in sasl.PASSWORD_PREFERENCE] == [
        "SCRAM-SHA-256",
        "CRAM-MD5",
        "PLAIN",
        "LOGIN",
    ]
