"""``python -m autocompress``."""

import sys

from autocompress.cli.main import main

sys.exit(main())
