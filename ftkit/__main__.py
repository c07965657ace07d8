import sys

from ftkit.cli import main

sys.exit(main())
