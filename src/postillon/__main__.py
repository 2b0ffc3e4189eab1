"""``python -m postillon ...``: the same as the ``postillon`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
