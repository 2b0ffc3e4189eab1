"""Integrations with other frameworks; each module imports its framework only when used.

- :mod:`postillon.contrib.django`: a Django email backend
  (``EMAIL_BACKEND = "postillon.contrib.django.EmailBackend"``).
"""
