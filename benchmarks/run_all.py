"""Run every side-by-side benchmark in turn and print one summary table (Markdown, ready for BENCHMARKS.md).

    python benchmarks/run_all.py            # defaults of each benchmark
    python benchmarks/run_all.py --quick    # smaller shapes, fewer repeats: a smoke run of a few minutes

First the user-level benchmarks -- the ``gpt-scratch pretrain``, ``respond`` and ``serve`` commands against the tool a
user would pick instead -- then the component ones (a training step, ``generate`` and the engine, data preparation,
memory).

Each benchmark also runs alone: ``python benchmarks/bench_train.py --help``.  Timings on a shared machine move with
the load of other processes: each benchmark prints how many cores other processes kept busy when it started, and
warns when that makes its figures unreliable.
"""

from __future__ import annotations

import argparse
import os
import time

import bench_data
import bench_generate
import bench_memory
import bench_pretrain
import bench_respond
import bench_serve
import bench_train
import common


# name: (module, default arguments, --quick arguments)
BENCHMARKS = {
    "pretrain": (bench_pretrain, [], ["--steps", "60", "--rounds", "1"]),
    "pretrain-124m": (
        bench_pretrain, ["--shape", "gpt2-small"], ["--shape", "gpt2-small", "--steps", "4", "--rounds", "1"]
    ),
    "respond": (bench_respond, [], ["--count", "30", "--rounds", "1"]),
    "serve": (bench_serve, [], []),
    "train": (bench_train, [], ["--batch", "4", "--seq", "128", "--repeats", "3"]),
    "generate": (bench_generate, [], ["--new-tokens", "50", "--repeats", "2"]),
    "engine": (bench_generate, ["--ours", "engine"], ["--ours", "engine", "--new-tokens", "50", "--repeats", "2"]),
    "data": (bench_data, [], ["--mb", "2", "--repeats", "2"]),
    "memory": (bench_memory, [], ["--batch", "4", "--seq", "128"]),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    args = p.parse_args(argv)
    commands = {}
    for name in args.only.split(","):
        module, default, quick = BENCHMARKS[name]
        argv_ = quick if args.quick else default
        print(f"\n-- {name}", flush=True)
        start, first_row = time.perf_counter(), len(common.ROWS)
        module.main(list(argv_))
        for row in common.ROWS[first_row:]:
            commands[id(row)] = " ".join(["python", f"benchmarks/{module.__name__}.py", *argv_])
        print(f"-- {name}: {time.perf_counter() - start:.0f} s", flush=True)

    m = common.machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"transformers {m['transformers']}, python {m['python']}")
    print("\n| benchmark | command | peer | peer figure | ours | ratio |")
    print("|---|---|---|---|---|---|")
    for row in common.ROWS:
        print(f"| {row['benchmark']} | `{commands.get(id(row), '')}` | {row['peer_name']} | "
              f"{row['peer']:.4g} {row['unit']} | {row['ours']:.4g} {row['unit']} | {row['ratio']:.2f}x |")
    return common.ROWS


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.abspath(__file__)) or ".")
    main()
