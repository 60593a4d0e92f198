"""`accelerate launch scripts/finetune_classifier.py [options]`: the `gpt-scratch finetune-classifier` workflow under Accelerate.

Single GPU:  accelerate launch scripts/finetune_classifier.py --config configs/...
Several:     accelerate launch --multi_gpu --num_processes 8 scripts/finetune_classifier.py ...
CPU ranks:   torchrun --nproc_per_node 2 scripts/finetune_classifier.py ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["finetune-classifier", *sys.argv[1:]]))
