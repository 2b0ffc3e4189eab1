"""Fixtures of the hardening suite and the hypothesis profiles.

Profiles: ``ci`` (the default; every fuzz test well under 10 s) and ``nightly``
(``HYPOTHESIS_PROFILE=nightly``: 100 times the examples, no deadline). The fuzz tests
use them through ``hardening._support.fuzz_settings()``. See docs/fuzzing.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from ._support import Client, make_client

CI_EXAMPLES = 200

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "nightly",
    max_examples=CI_EXAMPLES * 100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
#: the profile of this run; the fuzz tests apply it with ``@FUZZ`` rather than
#: ``load_profile()``, so the property tests of the other suites keep their own settings
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "nightly"):
    raise pytest.UsageError(f"HYPOTHESIS_PROFILE: 'ci' or 'nightly', not {PROFILE!r}")


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest) -> Iterator[Callable[..., Client]]:
    """Factory ``client(host, port, **settings)`` for the sync, then the async transporter."""
    made: list[Client] = []
    yield make_client(made, request.param)
    for c in made:
        c.dispose()
