import sys

from longvila.cli import main

sys.exit(main())
