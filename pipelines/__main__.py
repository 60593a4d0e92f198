"""``python -m pipelines <workflow>``: the same as ``gpt-scratch <workflow>``."""

import sys

from .cli import main

sys.exit(main())
