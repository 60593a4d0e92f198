"""`accelerate launch scripts/finetune_instruct.py [options]`: `gpt-scratch finetune-instruct` under Accelerate.

    accelerate launch scripts/finetune_instruct.py --config ...   # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune_instruct.py ...   # several
    torchrun --nproc_per_node 2 scripts/finetune_instruct.py ...   # CPU ranks
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune-instruct", *sys.argv[1:]]))
