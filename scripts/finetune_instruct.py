"""`accelerate launch scripts/finetune_instruct.py [options]`: `gpt-scratch finetune-instruct` under Accelerate.

    accelerate launch scripts/finetune_instruct.py --config ...   # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune_instruct.py ...   # several
    torchrun --nproc_per_node 2 scripts/finetune_instruct.py ...   # CPU ranks
"""

from _launch import launch

if __name__ == "__main__":
    launch("finetune-instruct")
