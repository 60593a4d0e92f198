"""`accelerate launch scripts/pretrain.py [options]`: the `gpt-scratch pretrain` workflow under Accelerate.

Single GPU:  accelerate launch scripts/pretrain.py --config configs/...
Several:     accelerate launch --multi_gpu --num_processes 8 scripts/pretrain.py ...
CPU ranks:   torchrun --nproc_per_node 2 scripts/pretrain.py ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
