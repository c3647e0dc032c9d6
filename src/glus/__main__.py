import sys

from glus.cli import main

sys.exit(main())
