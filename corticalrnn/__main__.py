import sys

from corticalrnn.cli import main

sys.exit(main())
