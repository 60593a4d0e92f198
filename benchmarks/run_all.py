"""Run every side-by-side benchmark in turn and print one summary table (Markdown, ready for BENCHMARKS.md).

    python benchmarks/run_all.py            # defaults of each benchmark
    python benchmarks/run_all.py --quick    # smaller shapes, fewer repeats: a smoke run of a few minutes

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
import bench_train
import common


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="train,generate,data,memory", help="comma-separated subset")
    args = p.parse_args(argv)
    quick = {
        "train": ["--batch", "4", "--seq", "128", "--repeats", "3"],
        "generate": ["--new-tokens", "50", "--repeats", "2"],
        "data": ["--mb", "2", "--repeats", "2"],
        "memory": ["--batch", "4", "--seq", "128"],
    }
    modules = {"train": bench_train, "generate": bench_generate, "data": bench_data, "memory": bench_memory}
    commands = {}
    for name in args.only.split(","):
        argv_ = quick[name] if args.quick else []
        print(f"\n-- {name}", flush=True)
        start, first_row = time.perf_counter(), len(common.ROWS)
        modules[name].main(argv_)
        for row in common.ROWS[first_row:]:
            commands[id(row)] = " ".join(["python", f"benchmarks/bench_{name}.py", *argv_])
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
