"""``python -m chatapp``: the console client."""

import sys

from chatapp.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
