"""Fixtures for the signing tests: keys, a throwaway CA, S/MIME certificates.

The helpers themselves live in :mod:`signing_helpers` (importable from other test
folders); their names are re-exported here for the modules that import them from
``.conftest``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from .signing_helpers import (
    P12_PASSWORD,
    DkimKeys,
    Pki,
    dns_for,
    make_ca,
    make_dkim_keys,
    make_pki,
    make_signer,
    new_rsa_key,
    openssl_path,
    openssl_verify,
    prepared,
    rich_message,
    simple_message,
    to_p12,
)

__all__ = [
    "P12_PASSWORD",
    "DkimKeys",
    "Pki",
    "dns_for",
    "make_ca",
    "make_signer",
    "openssl_verify",
    "prepared",
    "rich_message",
    "simple_message",
    "to_p12",
]


@pytest.fixture(scope="session")
def ca_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def ca_cert(ca_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return make_ca(ca_key)


@pytest.fixture(scope="session")
def signer_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
def pki(
    tmp_path: Path,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
) -> Pki:
    return make_pki(tmp_path, ca_key, ca_cert, signer_key)


@pytest.fixture(scope="session")
def openssl() -> str:
    return openssl_path()


@pytest.fixture(scope="session")
def dkim_keys() -> DkimKeys:
    return make_dkim_keys()
