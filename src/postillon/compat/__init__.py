"""Compatibility layers: the vendor APIs postillon comes from, over its public API.

* :mod:`postillon.compat.fourd`: 4D's ``SMTP New transporter``, ``.send()``,
  ``.checkConnection()``, ``MAIL Convert to MIME`` / ``from MIME``, ``MAIL New attachment``.
* :mod:`postillon.compat.windev`: WinDev's ``EmailStartSMTPSession``, ``EmailSendMessage``,
  ``EmailStatus``, ``EmailCloseSession``, ``EmailChangeTimeOut``, ``ErrorInfo`` and constants.

Example::

    from postillon.compat.fourd import smtp_new_transporter
    status = smtp_new_transporter({"host": "smtp.example.com"}).checkConnection()
"""

from __future__ import annotations

__all__ = ["fourd", "windev"]
