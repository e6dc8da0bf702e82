"""``python -m hashlab ...``: the hashlab command (see hashlab.cli)."""
import sys

from .cli import main

sys.exit(main())
