"""What every ``scripts/<workflow>.py`` does: run that workflow of ``gpt-scratch`` in this process, from a checkout
whether or not the package is installed -- the form ``accelerate launch`` and ``torchrun`` start once per device."""

import sys
from pathlib import Path


def launch(workflow: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipelines.cli import main

    sys.exit(main([workflow, *sys.argv[1:]]))
