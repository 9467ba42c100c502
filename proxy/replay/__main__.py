"""``python -m proxy.replay replay|test ...`` (the same commands as ``fiveplane``)."""

import sys

from .cli import main

sys.exit(main())
