"""``python -m cnnzoo`` (and ``torchrun -m cnnzoo``): the ``cnnzoo`` command line."""

import sys

from cnnzoo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
