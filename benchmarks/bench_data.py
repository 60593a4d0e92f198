"""Data preparation throughput: text files -> token shards, ours vs a single-process tiktoken loop.

* Corpus: ``/work/shared/data/*.txt`` (or ``--data``) and CPython's ``pydoc_data.topics``, one document per file,
  repeated to ``--mb`` megabytes and written once to a temporary folder.
* Vocabulary: a GPT-2-style byte-level BPE trained on the corpus with the project's ``train_bpe_tokenizer``.  The
  peer gets the *same* vocabulary as a ``tiktoken.Encoding`` built from it (its ranks are the BPE's token ids, whose
  order is the merge order; GPT-2's split pattern; ``<|endoftext|>`` as the special token), so both sides produce the
  same ids -- the benchmark counts the tokens that differ.
* Ours: ``pipelines.data.get_or_build_token_shards(folder, tokenizer, fresh cache folder)``: read the files, encode
  them with the Rust tokenizer's ``encode_batch`` (multi-threaded), write ``uint16`` shards + metadata.
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
from fast_encode import TiktokenEncoder, make_encoding, tiktoken_parts

SHARED_DATA = Path(os.environ.get("GPT_SCRATCH_SHARED_DATA", "/work/shared/data"))


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


def tiktoken_from_hf(tokenizer):
    """A ``tiktoken.Encoding`` with the vocabulary of a byte-level BPE ``PreTrainedTokenizerFast``.

    tiktoken's ranks are both merge priorities and token ids.  The ``tokenizers`` trainer numbers the learned tokens in
    the order of their merges, after the special token and the 256 bytes, so the BPE's ids serve as ranks as they are.
    """
    return make_encoding(*tiktoken_parts(tokenizer))


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

    from modeling_gpt_scratch.tokenization import train_bpe_tokenizer
    from pipelines.data import build_token_shards, get_or_build_token_shards, iter_documents, load_tokens

    print_header(f"data preparation: {args.mb:g} MB of text -> uint16 token shards")
    print(f"   TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset: on)')}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(unset: all cores)')}")
    docs = base_documents(args.data)
    tokenizer = train_bpe_tokenizer(docs, args.vocab_size)
    enc = tiktoken_from_hf(tokenizer)
    eos = tokenizer.eos_token_id

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

        def ours():  # the pipeline as it is: get_or_build_token_shards with the Rust tokenizer
            results["ours"] = get_or_build_token_shards(str(corpus), tokenizer, fresh("cache"))

        def ours_tiktoken():  # the same shard builder, encode_batch from benchmarks/fast_encode.py
            with TiktokenEncoder(tokenizer, check_texts=docs[:20]) as encoder:
                results["ours_tiktoken"] = build_token_shards(
                    iter_documents(str(corpus)), encoder, eos, fresh("tt"), vocab_size=len(tokenizer)
                )

        def peer():
            results["peer"] = peer_build(files, enc, eos, work / "peer.bin")

        variants = {"peer": peer, "ours": ours, "ours_tiktoken": ours_tiktoken}
        times = interleaved(variants, repeats=args.repeats, warmup=1)
        theirs = results["peer"].astype(np.int64)
        for name in ("ours", "ours_tiktoken"):
            mine = np.asarray(load_tokens(results[name]), dtype=np.int64)
            same = mine.shape == theirs.shape and bool((mine == theirs).all())
            print(f"   {name}: {len(mine)} tokens, {'identical to the peer' if same else 'DIFFERENT from the peer'}")
        peer_mbs = nbytes / 1e6 / median(times["peer"])
        report(
            f"data prep {args.mb:g}MB: get_or_build_token_shards",
            "tiktoken 1 process",
            peer_mbs,
            nbytes / 1e6 / median(times["ours"]),
            "MB/s",
            note=f"spread peer {spread(times['peer'])}, ours {spread(times['ours'])}",
        )
        report(
            f"data prep {args.mb:g}MB: build_token_shards+TiktokenEncoder",
            "tiktoken 1 process",
            peer_mbs,
            nbytes / 1e6 / median(times["ours_tiktoken"]),
            "MB/s",
            note=f"{os.cpu_count()} worker processes (fast_encode.py); spread {spread(times['ours_tiktoken'])}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


if __name__ == "__main__":
    main()
