"""Serving throughput: aggregate completion tokens/s of ``gpt-scratch serve`` with 1, 4 and 8 concurrent streaming
clients -- what batching the requests through the engine buys.

The real CLI is started as a subprocess on 127.0.0.1 (port 0) over a model folder: by default a tiny random model of
the demo shape (hidden 128, 4 layers, 4 heads, context 128) with a byte-level BPE tokenizer of 4096 entries trained on
the embedded corpus; or ``--model DIR``.  Each client sends ``--requests`` streaming completions one after another
(temperature 0, ``--max-tokens`` each, distinct prompts, no end-of-text suppression); completion tokens are counted
from each stream's usage chunk.  Reported per concurrency: aggregate tokens/s (all tokens / wall time), per-stream
tokens/s, the median time to first token, and the aggregate ratio vs one client (median over ``--repeats``, the
levels run in alternating order).  The goal: 8 streams >= 3x the aggregate tokens/s of one.  The server decodes with
one torch thread unless ``--server-threads`` says otherwise (see its help).

    python benchmarks/bench_serve.py
    python benchmarks/bench_serve.py --model runs/demo --requests 6 --max-tokens 96
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # noqa: F401  (sets the environment and sys.path)
from common import REPO, busy_cores, print_header, report

DEMO_SHAPE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128)


def build_demo_model(folder: Path, vocab_size: int = 4096, seed: int = 0) -> Path:
    """A random model of the demo shape with a trained byte-level BPE tokenizer, saved to ``folder``."""
    import torch

    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
    from pipelines.runs.tokenizers import train_bpe_tokenizer
    from pipelines.data.sources import default_corpus

    context = DEMO_SHAPE["max_position_embeddings"]
    tokenizer = train_bpe_tokenizer(default_corpus(), vocab_size, model_max_length=context)
    eos = tokenizer.eos_token_id
    config = GPTScratchConfig(vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=eos, pad_token_id=eos,
                              **DEMO_SHAPE)
    torch.manual_seed(seed)
    GPTScratchForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prompts(count: int) -> list[str]:
    """``count`` distinct prompts of a few words each, cut from the embedded corpus."""
    from pipelines.data.sources import default_corpus

    words = " ".join(default_corpus()[:50]).split()
    return [" ".join(words[i * 7 : i * 7 + 4 + i % 5]) for i in range(count)]


class Server:
    """``gpt-scratch serve`` in a subprocess; ``url`` once it says it is serving."""

    def __init__(self, model: Path, max_batch_size: int, log: Path, threads: int = 0):
        cli = Path(sys.executable).with_name("gpt-scratch")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "pipelines"]
        command += ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", "--no-access-log",
                    "--max-batch-size", str(max_batch_size), "--threads", str(threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = open(log, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout] + [lines.put(None)],
                         daemon=True).start()
        try:
            ready = lines.get(timeout=180)
        except queue.Empty:
            ready = None
        if not ready or " on http://" not in ready:
            self.close()
            raise SystemExit(f"gpt-scratch serve did not start: {ready!r}; see {log}")
        self.url = ready.split(" on ", 1)[1].strip()
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def health(self) -> dict:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", "/health")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.log.close()


def stream_completion(server: Server, prompt: str, max_tokens: int, timeout: float) -> tuple[int, float]:
    """One streamed completion: ``(completion tokens from the usage chunk, seconds to the first text)``."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    began, first, tokens = time.perf_counter(), None, None
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error in the stream: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - began
    finally:
        connection.close()
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return tokens, first if first is not None else time.perf_counter() - began


def load(server: Server, clients: int, requests: int, max_tokens: int, texts: list[str], timeout: float) -> dict:
    """``clients`` threads, each sending ``requests`` streamed completions in turn; the aggregate figures."""
    results: list[list] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(c):
        barrier.wait()
        try:
            for r in range(requests):
                results[c].append(stream_completion(server, texts[(c * requests + r) % len(texts)], max_tokens,
                                                    timeout))
        except BaseException as err:  # reported after the join
            errors.append(err)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout)
    wall = time.perf_counter() - began
    if errors or any(thread.is_alive() for thread in threads):
        raise SystemExit(f"a client failed: {errors[0] if errors else 'timed out'}")
    done = [item for per_client in results for item in per_client]
    tokens = sum(t for t, _ in done)
    return {"tokens": tokens, "wall": wall, "tok_s": tokens / wall, "ttft": statistics.median(f for _, f in done)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: a tiny random model of the demo shape)")
    p.add_argument("--clients", default="1,4,8", help="concurrency levels (default 1,4,8)")
    p.add_argument("--requests", type=int, default=4, help="streamed requests per client per level (default 4)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    p.add_argument("--repeats", type=int, default=2, help="runs per level; the median is reported (default 2)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--server-threads", type=int, default=1,
                   help="the server's --threads (default 1: on a shared machine two torch threads wait on each "
                   "other and the figures measure that, not batching; 0: torch's choice)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any one level may take")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]

    print_header(f"serve: {args.clients} concurrent streams x {args.requests} requests x {args.max_tokens} tokens")
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        model = Path(args.model) if args.model else build_demo_model(workdir / "demo")
        server = Server(model, args.max_batch_size, workdir / "serve-stderr.txt", args.server_threads)
        try:
            texts = prompts(max(levels) * args.requests)
            load(server, 2, 1, 8, texts, args.timeout)  # warm-up: first-call costs are not timed
            runs = {c: [] for c in levels}
            for r in range(args.repeats):
                for c in levels if r % 2 == 0 else levels[::-1]:
                    runs[c].append(load(server, c, args.requests, args.max_tokens, texts, args.timeout))
            stats = server.health()
        finally:
            server.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    busy = busy_cores()

    def med(c, key):
        return statistics.median(run[key] for run in runs[c])

    base = med(levels[0], "tok_s")
    print(f"   model: {args.model or 'demo shape, random weights'}; server torch threads: "
          f"{args.server_threads or 'default'}; batch sizes the server ran: {stats['batch_sizes']}")
    print(f"   {'clients':>7} {'tokens':>7} {'wall s':>7} {'agg tok/s':>10} {'per stream':>10} {'ttft ms':>8} "
          f"{'vs ' + str(levels[0]):>7}")
    for c in levels:
        print(f"   {c:>7} {med(c, 'tokens'):>7.0f} {med(c, 'wall'):>7.2f} {med(c, 'tok_s'):>10.1f} "
              f"{med(c, 'tok_s') / c:>10.1f} {1000 * med(c, 'ttft'):>8.0f} {med(c, 'tok_s') / base:>6.2f}x")
    print(f"   cores busy with other work after the run: {'?' if busy is None else f'{busy:.2f}'}")
    top = max(levels)
    if levels[0] == 1 and top > 1:
        report(f"serve {top} streams vs 1, {args.max_tokens}tok", "1 stream", base, med(top, "tok_s"), "tok/s",
               note=f"goal >= 3x: {'met' if med(top, 'tok_s') >= 3 * base else 'NOT met'}")
    return runs


if __name__ == "__main__":
    main()
