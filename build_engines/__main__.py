"""``python -m build_engines``: see :mod:`build_engines`."""

import sys

from build_engines import main

sys.exit(main())
