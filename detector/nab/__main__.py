"""``python -m detector.nab``: run our univariate model over a NAB tree and print its scores."""

from __future__ import annotations

import sys

from detector.nab.runner import main

if __name__ == "__main__":
    sys.exit(main())
