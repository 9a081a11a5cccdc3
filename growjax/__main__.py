"""`python -m growjax COMMAND ...`, the same as the `growjax` console script."""

import sys

from growjax.cli import main

sys.exit(main())
