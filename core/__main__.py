import sys

from telediag.cli import main

sys.exit(main())
