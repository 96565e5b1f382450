"""`python -m vikhr` is the `vikhr` command."""

import sys

from vikhr.cli import main

sys.exit(main())
