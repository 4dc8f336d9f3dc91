"""`python -m corticalrnn` (guarded: spawn workers re-import this module without running the CLI)."""

import sys

from corticalrnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
