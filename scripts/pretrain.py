"""`accelerate launch scripts/pretrain.py [options]`: `gpt-scratch pretrain` under Accelerate.

    accelerate launch scripts/pretrain.py --config ...   # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/pretrain.py ...   # several
    torchrun --nproc_per_node 2 scripts/pretrain.py ...   # CPU ranks
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
