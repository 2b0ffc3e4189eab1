"""Server side of the SASL mechanisms aiosmtpd lacks: CRAM-MD5, XOAUTH2, OAUTHBEARER and
SCRAM-SHA-256. Pure functions and one small state machine, no I/O: the test SMTP server
(:mod:`support.smtpd`) drives them, and they can be tested alone.

Example::

    challenge = cram_md5_challenge()
    user = cram_md5_verify(challenge, client_response, {"alice": "s3cret"})
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping

#: The JSON error challenge of XOAUTH2 (Google's form).
XOAUTH2_ERROR = json.dumps(
    {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
).encode()

#: The JSON error challenge of OAUTHBEARER (RFC 7628 3.2.2).
OAUTHBEARER_ERROR = json.dumps(
    {"status": "invalid_token", "schemes": "bearer", "scope": "mail"}
).encode()

SCRAM_ITERATIONS = 4096  # RFC 7677 4: the minimum for SCRAM-SHA-256


class SaslError(ValueError):
    """The client's SASL message is malformed (not a wrong password: a broken exchange)."""


# --- CRAM-MD5 (RFC 2195) -------------------------------------------------------------------


def cram_md5_challenge(hostname: str = "localhost") -> bytes:
    """A fresh RFC 2195 challenge: ``<random.timestamp@hostname>``."""
    return f"<{secrets.randbelow(10**10)}.{int(time.time())}@{hostname}>".encode()


def cram_md5_verify(
    challenge: bytes, response: bytes, credentials: Mapping[str, str]
) -> str | None:
    """Check ``user SP hex(HMAC-MD5(password, challenge))``; the user on success, else None."""
    user_b, sep, digest = response.rpartition(b" ")
    if not sep:
        raise SaslError("CRAM-MD5 response is not 'user digest'")
    user = user_b.decode("utf-8", "replace")
    password = credentials.get(user)
    if password is None:
        return None
    expected = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest().encode()
    return user if hmac.compare_digest(expected, digest.lower()) else None


# --- XOAUTH2 (Google) and OAUTHBEARER (RFC 7628) ---------------------------------------------


def parse_xoauth2(payload: bytes) -> tuple[str, str]:
    """``user=U ^A auth=Bearer T ^A ^A`` -> (user, token)."""
    fields: dict[str, str] = {}
    for part in payload.decode("utf-8", "strict").split("\x01"):
        if part:
            key, sep, value = part.partition("=")
            if not sep:
                raise SaslError("XOAUTH2 field without '='")
            fields[key] = value
    user = fields.get("user")
    auth = fields.get("auth", "")
    if not user or not auth.startswith("Bearer "):
        raise SaslError("XOAUTH2 needs user= and auth=Bearer")
    return user, auth[len("Bearer ") :]


def parse_oauthbearer(payload: bytes) -> tuple[str, str]:
    """RFC 7628 3.1 ``n,a=U,^Ahost=..^Aauth=Bearer T^A^A`` -> (user, token)."""
    text = payload.decode("utf-8", "strict")
    gs2, sep, rest = text.partition("\x01")
    if not sep or not gs2.startswith(("n,", "y,")):
        raise SaslError("OAUTHBEARER needs a gs2 header")
    user = ""
    for item in gs2.split(",")[1:]:
        if item.startswith("a="):
            user = _scram_unescape(item[2:])
    auth = ""
    for part in rest.split("\x01"):
        if part.startswith("auth="):
            auth = part[len("auth=") :]
    if not user or not auth.startswith("Bearer "):
        raise SaslError("OAUTHBEARER needs a=user and auth=Bearer")
    return user, auth[len("Bearer ") :]


def token_valid(tokens: Mapping[str, str], user: str, token: str) -> bool:
    """True when ``token`` is the valid token of ``user``."""
    expected = tokens.get(user)
    return expected is not None and hmac.compare_digest(expected.encode(), token.encode())


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) ---------------------------------------------------


def _scram_unescape(name: str) -> str:
    # RFC 5802 5.1: ',' and '=' travel as '=2C' and '=3D'
    return name.replace("=2C", ",").replace("=3D", "=")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramServer:
    """One SCRAM-SHA-256 exchange, server side.

    Example::

        scram = ScramServer({"alice": "pw"})
        server_first = scram.first(client_first)
        server_final = scram.final(client_final)   # b"v=..." on success
        assert scram.user == "alice"
    """

    def __init__(self, credentials: Mapping[str, str], iterations: int = SCRAM_ITERATIONS):
        self.credentials = credentials
        self.iterations = iterations
        self.user: str | None = None
        self._gs2 = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""
        self._salt = secrets.token_bytes(16)

    def first(self, client_first: bytes) -> bytes:
        """Take ``client-first-message``, answer ``server-first-message``."""
        parts = client_first.split(b",", 2)
        if len(parts) != 3 or parts[0] not in (b"n", b"y"):
            # 'p=' would ask for channel binding, which this server does not offer
            raise SaslError("SCRAM: bad gs2 header")
        self._gs2 = parts[0] + b"," + parts[1] + b","
        self._client_first_bare = parts[2]
        attrs = dict(
            item.split(b"=", 1) for item in self._client_first_bare.split(b",") if b"=" in item
        )
        if b"n" not in attrs or b"r" not in attrs:
            raise SaslError("SCRAM: client-first needs n= and r=")
        self.user = _scram_unescape(attrs[b"n"].decode("utf-8"))
        self._nonce = attrs[b"r"] + base64.b64encode(secrets.token_bytes(18))
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce,
            base64.b64encode(self._salt),
            self.iterations,
        )
        return self._server_first

    def final(self, client_final: bytes) -> bytes | None:
        """Take ``client-final-message``; ``v=ServerSignature`` if the proof is right."""
        without_proof, sep, proof_b64 = client_final.rpartition(b",p=")
        if not sep:
            raise SaslError("SCRAM: client-final without proof")
        attrs = dict(item.split(b"=", 1) for item in without_proof.split(b",") if b"=" in item)
        if attrs.get(b"r") != self._nonce:
            raise SaslError("SCRAM: nonce mismatch")
        if attrs.get(b"c") != base64.b64encode(self._gs2):
            raise SaslError("SCRAM: channel binding data mismatch")
        password = self.credentials.get(self.user or "")
        if password is None:
            return None
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self._salt, self.iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        client_signature = _hmac(stored_key, auth_message)
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError as exc:
            raise SaslError("SCRAM: proof is not base64") from exc
        if len(proof) != len(client_signature):
            return None
        recovered = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(recovered).digest(), stored_key):
            return None
        server_key = _hmac(salted, b"Server Key")
        return b"v=" + base64.b64encode(_hmac(server_key, auth_message))


def scram_client_proof(
    user: str, password: str, client_nonce: bytes, server_first: bytes
) -> tuple[bytes, bytes, bytes]:
    """Client side of SCRAM-SHA-256, for the harness self-tests only.

    Returns (client_first, client_final, expected_server_signature).
    """
    client_first_bare = b"n=" + user.encode() + b",r=" + client_nonce
    attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
    salt = base64.b64decode(attrs[b"s"])
    iterations = int(attrs[b"i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = b"c=" + base64.b64encode(b"n,,") + b",r=" + attrs[b"r"]
    auth_message = client_first_bare + b"," + server_first + b"," + without_proof
    signature = _hmac(stored_key, auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_sig = _hmac(_hmac(salted, b"Server Key"), auth_message)
    return (
        b"n,," + client_first_bare,
        without_proof + b",p=" + base64.b64encode(proof),
        b"v=" + base64.b64encode(server_sig),
    )
