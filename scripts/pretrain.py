"""`accelerate launch scripts/pretrain.py [options]`: `gpt-scratch pretrain` under Accelerate.

    accelerate launch scripts/pretrain.py --config ...   # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/pretrain.py ...   # several
    torchrun --nproc_per_node 2 scripts/pretrain.py ...   # CPU ranks
"""

from _launch import launch

if __name__ == "__main__":
    launch("pretrain")
