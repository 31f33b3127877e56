"""``python -m harness.cli``: the ``gdn-harness`` console script."""
import sys

from harness.cli import main

sys.exit(main())
