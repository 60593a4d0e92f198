"""`accelerate launch scripts/finetune_classifier.py [options]`: `gpt-scratch finetune-classifier` under Accelerate.

    accelerate launch scripts/finetune_classifier.py --config ...   # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune_classifier.py ...   # several
    torchrun --nproc_per_node 2 scripts/finetune_classifier.py ...   # CPU ranks
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune-classifier", *sys.argv[1:]]))
