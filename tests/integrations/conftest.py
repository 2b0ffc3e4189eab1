"""Django for the backend tests: configured once, with ``settings.configure()``.

Django is a dev dependency (the ``dev`` extra); without it the Django tests skip, or fail
in CI (``POSTILLON_REQUIRE_ALL=1``), like every other missing peer.
"""

from __future__ import annotations

from typing import Any

import pytest

from support.require import require


def _django() -> Any:
    try:
        import django
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        settings.configure(
            EMAIL_BACKEND="postillon.contrib.django.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=25,
            DEFAULT_FROM_EMAIL="webmaster@example.com",
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    return django


@pytest.fixture
def django_ready() -> Any:
    """Django, configured; skip (or fail in CI) when it is not installed."""
    django = _django()
    if django is None:
        require("Django", "pip install django (part of the dev extra)")
    return django
