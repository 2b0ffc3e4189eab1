"""Exim as the peer: every case of :mod:`._cases` (see ``servers/exim/``)."""

from __future__ import annotations

import pytest

from ._cases import InteropCases
from ._mta import MtaServer


class TestExim(InteropCases):
    """The shared cases against a private Exim."""

    @pytest.fixture
    def mta(self, exim: MtaServer) -> MtaServer:
        """The session's Exim."""
        return exim
