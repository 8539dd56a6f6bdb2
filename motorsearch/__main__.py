import sys

from motorsearch.cli import main

sys.exit(main())
