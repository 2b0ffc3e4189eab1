"""The durable outgoing spool (WinDev asynchronous mode, ``EmailStatus``).

Example::

    from postillon.spool import Spool, RetryPolicy

    with Spool("mail-spool.db") as spool:
        mail_id = spool.submit(mail)
        spool.run(transporter, workers=4, until_empty=True, retry=RetryPolicy())
        print(spool.status(mail_id).state)
"""

from __future__ import annotations

from ..status import SpoolState
from ._model import SpoolEntry
from ._policy import RetryPolicy
from ._spool import Spool
from ._worker import RunStats, SpoolHandle

__all__ = ["RetryPolicy", "RunStats", "Spool", "SpoolEntry", "SpoolHandle", "SpoolState"]
