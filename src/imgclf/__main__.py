"""python -m imgclf ARGS: the same as `imgclf ARGS`."""

import sys

from .cli import main

sys.exit(main())
