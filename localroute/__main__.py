import sys

from localroute.cli import main

sys.exit(main())
