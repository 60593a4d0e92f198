"""Data preparation throughput: text files -> token shards, ours vs a single-process tiktoken loop.

* Corpus: ``../shared/data/*.txt`` beside the repository (or ``--data``) and CPython's ``pydoc_data.topics``, one
  document per file, repeated to ``--mb`` megabytes and written once to a temporary folder.
* Vocabulary: a GPT-2-style byte-level BPE trained on the corpus with the project's ``train_bpe_tokenizer``.  Both
  sides encode with the *same* vocabulary as a ``tiktoken.Encoding`` (``pipelines.data.tokens.tiktoken_encoding``:
  its ranks are the BPE's token ids, whose order is the merge order; GPT-2's split pattern; ``<|endoftext|>`` as the
  special token), so both produce the same ids -- the benchmark counts the tokens that differ.
* Ours: ``pipelines.data.tokens.get_or_build_token_shards(folder, tokenizer, fresh cache folder)``, the pipeline as
  users run it: read the files, encode them in batches with tiktoken on all cores (its Rust core releases the GIL),
  write ``uint16`` shards + metadata.
* Peer: the same files read in the same order, ``Encoding.encode_ordinary`` per document in one process and thread,
  ids + end-of-text appended to a list, written as one ``uint16`` file.

Reported: megabytes of UTF-8 text per second (median over repeats) and ours / peer.

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --mb 32 --vocab-size 8192
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
from pathlib import Path

import common  # noqa: F401  (sets the environment and sys.path)
import numpy as np
from common import interleaved, median, print_header, report, spread

SHARED_DATA = Path(os.environ.get("GPT_SCRATCH_SHARED_DATA", common.REPO.parent / "shared" / "data"))


def base_documents(data_glob: str) -> list[str]:
    from pydoc_data.topics import topics

    docs = [Path(p).read_text(encoding="utf-8") for p in sorted(glob.glob(data_glob))]
    docs += [topics[key] for key in sorted(topics)]
    return [d for d in docs if d.strip()]


def write_corpus(docs: list[str], megabytes: float, folder: Path) -> int:
    """Documents repeated until ``megabytes`` MB, one ``.txt`` file each; returns the UTF-8 byte count."""
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0, 0
    while total < megabytes * 1e6:
        doc = docs[i % len(docs)]
        (folder / f"doc_{i:06d}.txt").write_text(doc, encoding="utf-8")
        total += len(doc.encode("utf-8"))
        i += 1
    return total


def peer_build(files: list[Path], enc, eos_id: int, out_file: Path) -> np.ndarray:
    """Read, encode (one process, one thread), append end-of-text, write ``uint16``."""
    ids: list[int] = []
    for path in files:
        ids += enc.encode_ordinary(path.read_text(encoding="utf-8"))
        ids.append(eos_id)
    arr = np.array(ids, dtype=np.uint16)
    arr.tofile(out_file)
    return arr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=8.0, help="corpus size in megabytes (UTF-8)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=str(SHARED_DATA / "*.txt"), help="glob of extra .txt documents")
    args = p.parse_args(argv)

    from pipelines.runs.tokenizers import train_bpe_tokenizer
    from pipelines.data.tokens import get_or_build_token_shards, load_tokens, tiktoken_encoding

    print_header(f"data preparation: {args.mb:g} MB of text -> uint16 token shards")
    print(f"   TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset: on)')}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(unset: all cores)')}")
    docs = base_documents(args.data)
    tokenizer = train_bpe_tokenizer(docs, args.vocab_size)
    enc = tiktoken_encoding(tokenizer)
    if enc is None:
        raise SystemExit("bench_data: tiktoken does not reproduce this tokenizer")
    eos = tokenizer.eos_token_id
    encoder = f"tiktoken, {len(os.sched_getaffinity(0))} threads"

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = work / "corpus"
        nbytes = write_corpus(docs, args.mb, corpus)
        files = sorted(corpus.glob("*.txt"))
        print(f"   corpus: {len(files)} documents, {nbytes / 1e6:.1f} MB; vocabulary {len(tokenizer)} tokens")
        runs = {"n": 0}
        results = {}

        def fresh(name):
            runs["n"] += 1
            return work / f"{name}{runs['n']}"

        def ours():  # the pipeline as users run it: get_or_build_token_shards
            results["ours"] = get_or_build_token_shards(str(corpus), tokenizer, fresh("cache"))

        def peer():
            results["peer"] = peer_build(files, enc, eos, work / "peer.bin")

        variants = {"peer": peer, "ours": ours}
        times = interleaved(variants, repeats=args.repeats, warmup=1)
        theirs = results["peer"].astype(np.int64)
        mine = np.asarray(load_tokens(results["ours"]), dtype=np.int64)
        same = mine.shape == theirs.shape and bool((mine == theirs).all())
        differ = int((mine != theirs).sum()) if mine.shape == theirs.shape else abs(len(mine) - len(theirs))
        print(f"   ours: {len(mine)} tokens, "
              f"{'identical to the peer' if same else f'DIFFERENT from the peer ({differ} tokens)'}")
        if not same:
            raise SystemExit("bench_data: our tokens differ from tiktoken's; the figures would mean nothing")
        report(
            f"data prep {args.mb:g}MB: get_or_build_token_shards",
            "tiktoken 1 process",
            nbytes / 1e6 / median(times["peer"]),
            nbytes / 1e6 / median(times["ours"]),
            "MB/s",
            note=f"{encoder}; spread peer {spread(times['peer'])}, ours {spread(times['ours'])}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


if __name__ == "__main__":
    main()
