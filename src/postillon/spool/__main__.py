"""``python -m postillon.spool run|status|list ...`` (the same as ``postillon spool ...``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
