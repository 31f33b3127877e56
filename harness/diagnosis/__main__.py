"""``python -m harness.diagnosis --zoo``: the diagnosis' accuracy on the fault zoo."""
from .zoo import main

raise SystemExit(main())
