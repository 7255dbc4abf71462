import sys

from rangefs.cli import main

sys.exit(main())
