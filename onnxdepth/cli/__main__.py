"""`python -m onnxdepth.cli`: the same as the `onnxdepth` command."""

import sys

from . import main

sys.exit(main())
