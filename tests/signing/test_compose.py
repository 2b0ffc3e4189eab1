"""S/MIME first, then DKIM over the result: both signatures hold on the same bytes."""

from __future__ import annotations

import dkim

from postillon.signing import DkimSigner, SmimeSigner

from .conftest import P12_PASSWORD, DkimKeys, Pki, dns_for, openssl_verify, prepared, rich_message


def test_smime_then_dkim(openssl: str, pki: Pki, dkim_keys: DkimKeys) -> None:
    smime = SmimeSigner(pki.p12, P12_PASSWORD)
    for key in (dkim_keys.rsa_pem, dkim_keys.ed25519_pem):
        signer = DkimSigner("example.com", "s2024", key)
        signed = signer.sign(smime.sign(prepared(rich_message(), chunk=8191)))
        data = signed.read()
        assert signed.size == len(data)
        assert data.startswith(b"DKIM-Signature: ")
        # DKIM covers the multipart/signed structure a receiver sees ...
        assert dkim.verify(data, dnsfunc=dns_for(signer))
        # ... and the S/MIME signature still holds under the added header
        result = openssl_verify(openssl, pki.ca_pem, data, pki.tmp)
        assert result.returncode == 0, result.stderr.decode()
        # a change in the signed content breaks both
        i = data.index(b"AAECAwQF")
        tampered = data[:i] + b"B" + data[i + 1 :]
        assert not dkim.verify(tampered, dnsfunc=dns_for(signer))
        assert openssl_verify(openssl, pki.ca_pem, tampered, pki.tmp).returncode != 0
