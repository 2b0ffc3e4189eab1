"""``postillon send`` and ``postillon spool submit`` with DKIM and S/MIME signing, run as the
installed command; what the server received is verified with dkimpy and openssl."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import one_clear_line
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from postillon.signing import DkimSigner
from signing.signing_helpers import (
    P12_PASSWORD,
    DkimKeys,
    Pki,
    assert_smime_verifies,
    dkim_tags,
    dkim_verifies,
    make_ca,
    make_dkim_keys,
    make_pki,
    need_nacl,
    new_rsa_key,
    openssl_path,
)

SMIME_PASSWORD = P12_PASSWORD.decode()
SUBJECT = "Réunion — compte rendu"


@pytest.fixture(scope="module")
def keys() -> DkimKeys:
    return make_dkim_keys()


@pytest.fixture(scope="module")
def ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey]:
    ca_key = new_rsa_key()
    return ca_key, make_ca(ca_key), new_rsa_key()


@dataclass
class Files:
    """Key material on disk, as a user would have it."""

    rsa_key: Path
    ed25519_key: Path
    p12: Path
    pki: Pki
    openssl: str
    rsa: DkimSigner
    ed25519: DkimSigner
    attachment: Path
    attachment_data: bytes


@pytest.fixture
def files(tmp_path: Path, keys: DkimKeys, ca: Any) -> Files:
    pki = make_pki(tmp_path, *ca)
    rsa_key = tmp_path / "dkim-rsa.pem"
    rsa_key.write_bytes(keys.rsa_pem)
    ed_key = tmp_path / "dkim-ed25519.pem"
    ed_key.write_bytes(keys.ed25519_pem)
    p12 = tmp_path / "ann.p12"
    p12.write_bytes(pki.p12)
    data = hashlib.shake_256(b"cli").digest(150_000)
    attachment = tmp_path / "relevé.bin"
    attachment.write_bytes(data)
    (tmp_path / "body.txt").write_text("Bonjour,\nle relevé est joint.\n", encoding="utf-8")
    return Files(
        rsa_key, ed_key, p12, pki, openssl_path(),
        DkimSigner("example.com", "cli2025", keys.rsa_pem),
        DkimSigner("example.com", "cli2025", keys.ed25519_pem),
        attachment, data,
    )  # fmt: skip


def plain(server: Any) -> list[str]:
    return ["--host", server.host, "--port", str(server.port), "--security", "none"]


MESSAGE = [
    "--from", "Zoë <ann@example.com>", "--to", "bob@example.org", "--subject", SUBJECT,
    "--text", "body.txt", "--attach", "relevé.bin",
]  # fmt: skip


def check_message(content: bytes, files: Files) -> None:
    """The subject and the attachment arrived intact under the signatures."""
    import email
    import email.policy

    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT
    for part in parsed.walk():
        if part.get_filename() == "relevé.bin":
            assert part.get_content() == files.attachment_data
            return
    raise AssertionError("the attachment is missing")


# ---------------------------------------------------------------- postillon send


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_send_dkim_flags(cli: Any, smtpd: Any, files: Files, algorithm: str) -> None:
    if algorithm == "ed25519":
        need_nacl()
    key, signer = (
        (files.rsa_key, files.rsa) if algorithm == "rsa" else (files.ed25519_key, files.ed25519)
    )
    server = smtpd()
    r = cli(
        "send", *plain(server), *MESSAGE,
        "--dkim-key", str(key), "--dkim-domain", "example.com", "--dkim-selector", "cli2025",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    assert msg.content.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    assert dkim_verifies(msg.content, signer)
    check_message(msg.content, files)


def test_send_smime_with_password_from_environment(
    cli: Any, smtpd: Any, files: Files, tmp_path: Path
) -> None:
    server = smtpd()
    r = cli(
        "send", *plain(server), *MESSAGE, "--smime-cert", str(files.p12),
        env={"POSTILLON_SMIME_PASSWORD": SMIME_PASSWORD},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    assert b"DKIM-Signature" not in msg.content
    inner = assert_smime_verifies(files.openssl, files.pki.ca_pem, msg.content, tmp_path)
    assert inner.startswith(b"Content-Type: multipart/mixed")
    check_message(msg.content, files)
    assert SMIME_PASSWORD not in r.stdout + r.stderr


def test_send_both_from_account_with_env_and_flag_precedence(
    cli: Any, smtpd: Any, files: Files, tmp_path: Path
) -> None:
    # The account holds every signing key; POSTILLON_DKIM_SELECTOR beats the account's
    # selector, and --dkim-domain beats POSTILLON_DKIM_DOMAIN (same order as --host etc.).
    server = smtpd()
    config = tmp_path / "postillon.toml"
    command = [sys.executable, "-c", f"print({SMIME_PASSWORD!r})"]
    config.write_text(
        "[accounts.work]\n"
        f'host = "{server.host}"\nport = {server.port}\nsecurity = "none"\n'
        'from = "Zoë <ann@example.com>"\n'
        f"dkim_key = {json.dumps(str(files.rsa_key))}\n"
        'dkim_domain = "account.example"\ndkim_selector = "from-account"\n'
        f"smime_cert = {json.dumps(str(files.p12))}\n"
        f"smime_password_command = {json.dumps(command)}\n",  # JSON strings are TOML strings
        encoding="utf-8",
    )
    r = cli(
        "send", "--config", str(config), "--account", "work", "--to", "bob@example.org",
        "--subject", SUBJECT, "--text", "body.txt", "--attach", "relevé.bin",
        "--dkim-domain", "example.com",
        env={"POSTILLON_DKIM_SELECTOR": "cli2025", "POSTILLON_DKIM_DOMAIN": "env.example"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    tags = dkim_tags(msg.content)
    assert (tags["d"], tags["s"]) == ("example.com", "cli2025")
    assert dkim_verifies(msg.content, files.rsa)
    assert_smime_verifies(files.openssl, files.pki.ca_pem, msg.content, tmp_path)
    check_message(msg.content, files)
    assert SMIME_PASSWORD not in r.stdout + r.stderr


def test_send_many_eml_files_all_signed(cli: Any, smtpd: Any, files: Files) -> None:
    server = smtpd()
    for i in range(3):
        (files.p12.parent / f"m{i}.eml").write_bytes(
            b"From: ann@example.com\r\nTo: bob@example.org\r\n"
            + f"Subject: n{i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nhello\r\n".encode()
        )
    r = cli(
        "send", *plain(server), "--eml", "m0.eml", "--eml", "m1.eml", "--eml", "m2.eml",
        env={"POSTILLON_DKIM_KEY": str(files.rsa_key), "POSTILLON_DKIM_DOMAIN": "example.com",
             "POSTILLON_DKIM_SELECTOR": "cli2025"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    received = server.wait_for(3)
    assert len(received) == 3
    assert all(dkim_verifies(m.content, files.rsa) for m in received)


# ---------------------------------------------------------------- postillon spool


def test_spool_submit_stores_signed_and_run_sends_those_bytes(
    cli: Any, smtpd: Any, files: Files, tmp_path: Path
) -> None:
    server = smtpd()
    r = cli(
        "spool", "submit", "--spool", "mail.db", *MESSAGE, "--smime-cert", str(files.p12),
        "--dkim-key", str(files.rsa_key), "--dkim-domain", "example.com",
        "--dkim-selector", "cli2025", env={"POSTILLON_SMIME_PASSWORD": SMIME_PASSWORD},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    mail_id = r.stdout.strip()
    with sqlite3.connect(tmp_path / "mail.db") as conn:
        rows = conn.execute(
            "SELECT data FROM spool_chunks WHERE mail_id = ? ORDER BY seq", (mail_id,)
        ).fetchall()
    stored = b"".join(row[0] for row in rows)
    assert stored.startswith(b"DKIM-Signature: ")  # signed before it was stored
    r = cli("spool", "run", "--spool", "mail.db", *plain(server), "--until-empty", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    [msg] = server.wait_for(1)
    assert msg.content == stored
    assert dkim_verifies(msg.content, files.rsa)
    assert_smime_verifies(files.openssl, files.pki.ca_pem, msg.content, tmp_path)
    check_message(msg.content, files)


def test_spool_submit_account_keys_and_from(cli: Any, smtpd: Any, files: Files) -> None:
    # spool submit takes --account for its signing keys (and the account's From)
    need_nacl()
    server = smtpd()
    config = files.p12.parent / "c.toml"
    config.write_text(
        f'[accounts.a]\nhost = "unused.invalid"\nfrom = "ann@example.com"\n'
        f'dkim_key = "{files.ed25519_key}"\ndkim_domain = "example.com"\n'
        'dkim_selector = "cli2025"\n',
        encoding="utf-8",
    )
    r = cli(
        "spool", "submit", "--spool", "s.db", "--config", str(config), "--account", "a",
        "--to", "bob@example.org", "--subject", "x", "--count", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(r.stdout.split()) == 2
    r = cli("spool", "run", "--spool", "s.db", *plain(server), "--until-empty", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    received = server.wait_for(2)
    ids = {m.parsed()["Message-ID"] for m in received}
    assert len(ids) == 2  # two copies, two messages, each signed on its own
    for m in received:
        assert m.mail_from == "ann@example.com"
        assert dkim_verifies(m.content, files.ed25519)


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (["--dkim-key", "missing.pem", "--dkim-domain", "example.com", "--dkim-selector", "s"],
         {}, "--dkim-key: no such file: missing.pem"),
        (["--dkim-key", "{rsa}", "--dkim-selector", "s"], {}, "needs the signing domain"),
        (["--dkim-key", "{rsa}", "--dkim-domain", "example.com"], {}, "needs the selector"),
        (["--dkim-domain", "example.com"], {}, "--dkim-domain: given without a DKIM key"),
        (["--dkim-key", "body.txt", "--dkim-domain", "example.com", "--dkim-selector", "s"],
         {}, "--dkim-key: not a PEM or DER private key"),
        (["--dkim-key", "{rsa}", "--dkim-domain", "exa mple.com", "--dkim-selector", "s"],
         {}, "--dkim-domain: character ' ' is not allowed"),
        ([], {"POSTILLON_DKIM_KEY": "{rsa}", "POSTILLON_DKIM_DOMAIN": "example.com",
              "POSTILLON_DKIM_SELECTOR": "a;b"},
         "POSTILLON_DKIM_SELECTOR: ';' and '=' are not allowed"),
        (["--smime-cert", "missing.p12"], {"POSTILLON_SMIME_PASSWORD": "x"},
         "--smime-cert: no such file: missing.p12"),
        (["--smime-cert", "{p12}"], {"POSTILLON_SMIME_PASSWORD": "wrong-horse"},
         "--smime-cert: cannot load the PKCS#12 data: the password is wrong"),
        (["--smime-cert", "{p12}"], {}, "no password was given: set POSTILLON_SMIME_PASSWORD"),
        (["--smime-cert", "body.txt"], {"POSTILLON_SMIME_PASSWORD": "x"},
         "--smime-cert: cannot load the PKCS#12 data"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["send", "submit"])
def test_bad_signing_input(
    cli: Any,
    smtpd: Any,
    files: Files,
    tmp_path: Path,
    command: str,
    extra: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    subst = {"{rsa}": str(files.rsa_key), "{p12}": str(files.p12)}
    extra = [subst.get(a, a) for a in extra]
    env = {k: subst.get(v, v) for k, v in env.items()}
    server = smtpd()
    if command == "send":
        args = ["send", *plain(server), *MESSAGE, *extra]
    else:
        args = ["spool", "submit", "--spool", "bad.db", *MESSAGE, *extra]
    r = cli(*args, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_clear_line(r.stderr)
    assert expected in line, line
    assert "wrong-horse" not in r.stdout + r.stderr
    assert server.messages == [] and server.connections == 0  # nothing connected
    if command == "submit":
        assert not (tmp_path / "bad.db").exists()  # nothing stored


def test_no_password_flag_for_smime(cli: Any, files: Files) -> None:
    # the password never comes from a flag (ps, shell history)
    r = cli(
        "send", "--host", "127.0.0.1", *MESSAGE, "--smime-cert", str(files.p12),
        "--smime-password", SMIME_PASSWORD,
    )  # fmt: skip
    assert r.returncode == 2
    assert "unrecognized arguments" in r.stderr


def test_failing_smime_password_command(cli: Any, files: Files, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[accounts.a]\nhost = "127.0.0.1"\nsmime_cert = "{files.p12}"\n'
        "smime_password_command = "
        + json.dumps([sys.executable, "-c", "import sys; sys.exit(3)"])
        + "\n",
        encoding="utf-8",
    )
    r = cli("send", "--config", str(config), "--account", "a", *MESSAGE)
    assert r.returncode == 2
    line = one_clear_line(r.stderr)
    assert "smime_password_command failed (exit 3)" in line, line
