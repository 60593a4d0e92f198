"""Tests of pipelines/data/: every input format, token shards and their cache, datasets, splits and collates."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.data.collates import instruction_collate, pad_collate_classification
from pipelines.data.instructions import read_instructions
from pipelines.data.sources import iter_documents, resolve_source
from pipelines.data.tables import balance_undersample, label_maps, label_names, read_labeled_table, split_records
from pipelines.data.tokens import ConcatTokens, CroppedDocumentDataset, SlidingWindowDataset, build_token_shards, get_or_build_token_shards, load_meta, load_tokens, pretraining_dataset, split_doc_starts, split_tokens, token_cache, tokenizer_fingerprint
from pipelines.errors import UserError

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE (like GPT-2's) trained on a few sentences, with <|endoftext|> as EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    sentences = ["the quick brown fox jumps over the lazy dog", "hello world, hello tokens", "a b c d e f g"] * 5
    backend.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT, pad_token=EOT)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json_lines(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


# ---- sources ---------------------------------------------------------------------------------------------------


def test_resolve_source_local_hub_and_missing(tmp_path, monkeypatch):
    f = write(tmp_path / "a.txt", "x")
    assert resolve_source(str(f)) == ("local", f)
    assert resolve_source(str(tmp_path)) == ("local", tmp_path)
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "owner" / "name", "a local file shadows the hub id")
    assert resolve_source("owner/name") == ("local", Path("owner/name"))
    assert resolve_source("tatsu-lab/alpaca") == ("hub", "tatsu-lab/alpaca")
    wikitext = "Salesforce/wikitext:wikitext-2-raw-v1"
    assert resolve_source(wikitext) == ("hub", wikitext)
    for missing in ["data/train.csv", "./corpus", "a/b/c", "~/no-such-dir-xyz/x", "corpus", "/abs/path", "x/y:z:w"]:
        with pytest.raises(UserError, match=f"data path '{missing}' does not exist"):
            resolve_source(missing)


def test_hub_id_offline_says_it_needs_network_and_how_to_pass_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        list(iter_documents("someone/some-corpus"))
    msg = str(err.value)
    assert "someone/some-corpus" in msg and "needs the network" in msg and "HF_HUB_OFFLINE" in msg
    assert "--data PATH" in msg and ".jsonl" in msg and ".csv" in msg
    with pytest.raises(UserError, match="needs the network"):
        read_instructions("tatsu-lab/alpaca")
    with pytest.raises(UserError, match="needs the network"):
        read_labeled_table("ucirvine/sms_spam")


def test_hub_connection_error_becomes_user_error(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def unreachable(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError, match=r"needs the network \(the Hub could not be reached.*--data PATH"):
        list(iter_documents("owner/name:cfg"))
    assert calls == [(("owner/name", "cfg"), {"split": "train", "streaming": True})]


# ---- pretraining text ------------------------------------------------------------------------------------------


def test_iter_documents_folder_is_recursive_sorted_and_skips_hidden(tmp_path):
    write(tmp_path / "b.txt", "second file")
    write(tmp_path / "a" / "z.md", "# first, in a subfolder")
    write_json_lines(tmp_path / "c.jsonl", [{"text": "record one", "id": 1}, {"text": "   "}, {"text": "record two"}])
    write(tmp_path / "d.csv", 'id,text\n1,"a, quoted ""cell"""\n')
    write(tmp_path / "e.tsv", 'text\tid\nbare "quotes" stay\t1\n')
    write(tmp_path / ".cache" / "x.txt", "hidden: never read")
    write(tmp_path / "notes.pdf", "unsupported type: ignored in a folder")
    docs = list(iter_documents(str(tmp_path)))
    assert docs == [
        "# first, in a subfolder",
        "second file",
        "record one",
        "record two",
        'a, quoted "cell"',
        'bare "quotes" stay',
    ]


def test_iter_documents_json_list_text_column_and_parquet(tmp_path):
    write(tmp_path / "c.json", json.dumps([{"body": "one"}, {"body": "two"}]))
    assert list(iter_documents(str(tmp_path / "c.json"), text_column="body")) == ["one", "two"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p one", "p two"], "n": [1, 2]}), tmp_path / "t.parquet")
    assert list(iter_documents(str(tmp_path / "t.parquet"))) == ["p one", "p two"]


def test_default_corpus_is_pydoc_topics_in_key_order():
    from pydoc_data.topics import topics

    docs = list(iter_documents(None))
    assert docs == [topics[k] for k in sorted(topics)]
    assert len(docs) > 10 and sum(map(len, docs)) > 100_000


def test_non_utf8_file_is_named(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.txt is not UTF-8 text \(invalid byte 0xe9\)"):
        list(iter_documents(str(bad)))
    lines = tmp_path / "latin.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n' + '{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.jsonl .*is not UTF-8"):
        list(iter_documents(str(lines)))


def test_empty_corpus_names_the_source(tmp_path):
    empty = write(tmp_path / "empty.txt", "  \n\n")
    with pytest.raises(UserError, match=r"the corpus '.*empty\.txt' is empty"):
        list(iter_documents(str(empty)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="holds no supported files"):
        list(iter_documents(str(tmp_path / "nothing")))


def test_missing_text_column_lists_available_columns(tmp_path):
    f = write_json_lines(tmp_path / "c.jsonl", [{"content": "x", "meta": 1}])
    expected = r"c\.jsonl: record index 0 \(line 1\) has no column 'text'; available columns: 'content', 'meta'"
    with pytest.raises(UserError, match=expected):
        list(iter_documents(str(f)))


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"text": "a"}\n\n{"text": "b",}\n')
    with pytest.raises(UserError, match=r"c\.jsonl: record index 1 \(line 3\) is not valid JSON"):
        list(iter_documents(str(f)))


# ---- token shards ----------------------------------------------------------------------------------------------


def fake_encoder(calls=None):
    """Each character becomes its code point; records every batch it is given."""

    def encode_batch(texts):
        if calls is not None:
            calls.append(list(texts))
        return [[ord(c) for c in t] for t in texts]

    return encode_batch


def test_shards_round_trip_uint16_with_eos_between_documents(tmp_path):
    docs = ["hello", "world!", "abc", "z" * 17]
    calls = []
    out = build_token_shards(
        docs, fake_encoder(calls), eos_id=0, out_dir=tmp_path / "s", vocab_size=50257, shard_tokens=8, batch_chars=6
    )
    assert all(len(batch) >= 1 for batch in calls) and sum(map(len, calls)) == 4 and len(calls) < 4
    expected = []
    for d in docs:
        expected += [ord(c) for c in d] + [0]
    meta = load_meta(out)
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == len(expected) and meta["eos_id"] == 0
    assert [s["num_tokens"] for s in meta["shards"]] == [8, 8, 8, 8, len(expected) - 32]
    shard_files = [f"shard_0000{i}.bin" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == ["doc_starts.npy", "meta.json"] + shard_files
    assert (out / "shard_00000.bin").stat().st_size == 16  # raw uint16, no header
    assert list(meta["doc_starts"]) == [0, 6, 13, 17]
    tokens = load_tokens(out)
    assert isinstance(tokens, ConcatTokens)
    assert np.array_equal(np.asarray(tokens), expected)
    assert np.array_equal(tokens[5:20], expected[5:20])  # a slice across three shards
    assert all(tokens[s - 1] == 0 for s in list(meta["doc_starts"][1:]) + [len(tokens)])  # EOS after each document
    assert not list(tmp_path.glob(".s.*"))  # no temp folders left behind


def test_shards_uint32_for_large_vocab(tmp_path):
    def encode_batch(texts):
        return [[70_000 + len(t), 5, 65_536] for t in texts]

    out = build_token_shards(["ab", "abc"], encode_batch, 99_999, tmp_path / "s", vocab_size=100_000)
    meta = load_meta(out)
    assert meta["dtype"] == "uint32" and len(meta["shards"]) == 1
    tokens = load_tokens(out)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.dtype("<u4")
    assert tokens.tolist() == [70_002, 5, 65_536, 99_999, 70_003, 5, 65_536, 99_999]
    raw = np.fromfile(out / "shard_00000.bin", dtype="<u4")
    assert raw.tolist() == tokens.tolist()


def test_shard_folder_appears_whole_or_not_at_all(tmp_path):
    def failing(texts):
        if "boom" in texts:
            raise RuntimeError("encoder died")
        return [[1] for _ in texts]

    with pytest.raises(RuntimeError):
        build_token_shards(["a", "b", "boom"], failing, 0, tmp_path / "s", 10, shard_tokens=2, batch_chars=1)
    assert list(tmp_path.iterdir()) == []


def test_tokens_outside_vocab_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_token_shards(["abc"], fake_encoder(), 0, tmp_path / "s", vocab_size=50)


def test_get_or_build_caches_and_round_trips_text(tmp_path, tiny_tokenizer, monkeypatch):
    corpus = tmp_path / "corpus"
    write(corpus / "a.txt", "the quick brown fox")
    write(corpus / "b.txt", "hello world, " + EOT + " hello")
    builds = []
    real_build = build_token_shards
    from pipelines.data import tokens

    monkeypatch.setattr(tokens, "build_token_shards", lambda *a, **k: builds.append(1) or real_build(*a, **k))

    cache = tmp_path / "cache"
    first = get_or_build_token_shards(str(corpus), tiny_tokenizer, cache)
    mtime = (first / "meta.json").stat().st_mtime_ns
    second = get_or_build_token_shards(str(corpus), tiny_tokenizer, cache)
    assert first == second and len(builds) == 1 and (first / "meta.json").stat().st_mtime_ns == mtime
    assert first.name.startswith("tokens-corpus-")

    meta, tokens = load_meta(first), load_tokens(first)
    eos = tiny_tokenizer.eos_token_id
    starts = list(meta["doc_starts"]) + [meta["num_tokens"]]
    docs = [tokens[a:b] for a, b in zip(starts, starts[1:])]
    assert all(d[-1] == eos for d in docs)
    assert tiny_tokenizer.decode(docs[0][:-1]) == "the quick brown fox"
    assert tiny_tokenizer.decode(docs[1][:-1]) == "hello world, " + EOT + " hello"
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tiny_tokenizer)

    write(corpus / "a.txt", "the quick brown fox jumps")  # new content: another key, another build
    os.utime(corpus / "a.txt", ns=(mtime + 10**9, mtime + 10**9))
    third = get_or_build_token_shards(str(corpus), tiny_tokenizer, cache)
    assert third != first and len(builds) == 2
    assert get_or_build_token_shards(str(corpus), tiny_tokenizer, cache, text_column="body") != third
    first_only = get_or_build_token_shards(str(corpus), tiny_tokenizer, cache, max_documents=1)
    assert first_only != third and load_meta(first_only)["num_documents"] == 1 and len(builds) == 4


def test_token_cache_key_depends_on_tokenizer_and_source(tmp_path, tiny_tokenizer):
    f = write(tmp_path / "x.txt", "abc")
    fp = tokenizer_fingerprint(tiny_tokenizer)
    assert fp == tokenizer_fingerprint(tiny_tokenizer) and len(fp) == 64
    a = token_cache(str(f), fp, tmp_path / "c")
    assert a == token_cache(str(f), fp, tmp_path / "c")
    assert a != token_cache(str(f), "other-tokenizer", tmp_path / "c")
    assert token_cache(None, fp, tmp_path / "c").name.startswith("tokens-default-corpus-")
    hub = token_cache("owner/name:cfg", fp, tmp_path / "c")
    assert hub.name.startswith("tokens-owner--name--cfg-")


# ---- pretraining datasets --------------------------------------------------------------------------------------


def pairs(ds):
    """``(input ids, next-token targets)`` of every item (``{"input_ids", "shift_labels"}`` dicts)."""
    return [(item["input_ids"].tolist(), item["shift_labels"].tolist()) for item in (ds[i] for i in range(len(ds)))]


def test_sliding_window_gives_the_books_pairs():
    tokens = list(range(21))
    ds = SlidingWindowDataset(tokens, max_length=4, stride=4)
    assert pairs(ds) == [
        ([0, 1, 2, 3], [1, 2, 3, 4]),
        ([4, 5, 6, 7], [5, 6, 7, 8]),
        ([8, 9, 10, 11], [9, 10, 11, 12]),
        ([12, 13, 14, 15], [13, 14, 15, 16]),
        ([16, 17, 18, 19], [17, 18, 19, 20]),
    ]
    ds1 = SlidingWindowDataset(tokens, max_length=4, stride=1)
    assert len(ds1) == 17
    assert pairs(ds1)[0] == ([0, 1, 2, 3], [1, 2, 3, 4]) and pairs(ds1)[-1] == ([16, 17, 18, 19], [17, 18, 19, 20])
    item = ds1[3]
    assert set(item) == {"input_ids", "shift_labels"}
    assert item["input_ids"].dtype == torch.int64 and item["shift_labels"].dtype == torch.int64
    joined = pretraining_dataset("joined", np.arange(21, dtype=np.uint16), 4)
    assert pairs(joined) == pairs(ds)
    with pytest.raises(UserError, match="corpus shorter than one context.*has 4 tokens but needs at least 5"):
        SlidingWindowDataset([1, 2, 3, 4], max_length=4, stride=1)
    with pytest.raises(UserError, match="unknown data layout 'packed'"):
        pretraining_dataset("packed", tokens, 4)


def test_cropped_documents_pad_inputs_and_ignore_labels():
    # documents: [1 2 3 E] [4 5 6 7 8 9 E] [E] [10 E]
    E = 0
    tokens = [1, 2, 3, E, 4, 5, 6, 7, 8, 9, E, E, 10, E]
    ds = CroppedDocumentDataset(tokens, [0, 4, 11, 12], max_length=4, pad_id=E)
    assert pairs(ds) == [
        ([1, 2, 3, E], [2, 3, E, -100]),
        ([4, 5, 6, 7], [5, 6, 7, 8]),
        ([10, E, E, E], [E, -100, -100, -100]),
    ]


def test_split_tokens_is_disjoint_covering_and_fixed_by_seed():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = split_tokens(tokens, (0.8, 0.1, 0.1), seed=7, context_length=99)
    b = split_tokens(tokens, (0.8, 0.1, 0.1), seed=7, context_length=99)
    c = split_tokens(tokens, (0.8, 0.1, 0.1), seed=8, context_length=99)
    assert list(a) == ["train", "val", "test"]
    got = {k: np.asarray(v) for k, v in a.items()}
    assert all(np.array_equal(got[k], np.asarray(b[k])) for k in a)
    assert any(not np.array_equal(got[k], np.asarray(c[k])) for k in a)
    everything = np.concatenate(list(got.values()))
    assert len(everything) == 10_000 and np.array_equal(np.sort(everything), tokens)  # disjoint and covering
    assert len(got["val"]) == len(got["test"]) == 1000  # 100 blocks of 100 tokens, 10 each
    for k in a:  # each split is whole blocks in stream order
        assert np.array_equal(got[k], np.concatenate([tokens[s:e] for s, e in a[k].ranges]))
        assert all(e - s >= 100 for s, e in a[k].ranges)
    assert SlidingWindowDataset(a["val"], 99, 99)[0]["input_ids"].tolist() == got["val"][:99].tolist()
    # a ConcatTokens input (several shards) splits the same way
    sharded = ConcatTokens([tokens[:3333], tokens[3333:]])
    from_shards = split_tokens(sharded, (0.8, 0.1, 0.1), seed=7, context_length=99)
    assert all(np.array_equal(np.asarray(v), got[k]) for k, v in from_shards.items())
    two = split_tokens(tokens, (0.9, 0.1, 0.0), seed=0, context_length=99)
    assert list(two) == ["train", "val"]
    by_block = split_tokens(tokens, (0.8, 0.1, 0.1), block=100, seed=7)  # block alone: one block, one context
    assert all(np.array_equal(np.asarray(v), got[k]) for k, v in by_block.items())


def test_split_tokens_too_short_corpus_says_how_many_tokens():
    with pytest.raises(UserError, match=r"corpus shorter than one context: .* has 300 tokens but needs at least 303"):
        split_tokens(np.arange(300), (0.8, 0.1, 0.1), context_length=100)
    with pytest.raises(UserError, match="has 50 tokens but needs at least 202"):
        split_tokens(np.arange(50), (0.9, 0.1, 0.0), context_length=100)
    with pytest.raises(UserError, match="must be three non-negative numbers"):
        split_tokens(np.arange(5000), (0.8, 0.3, 0.1), context_length=10)


def test_split_doc_starts_maps_documents_into_a_split():
    tokens = np.arange(40)
    doc_starts = [0, 5, 12, 25, 33]
    ranges = [(10, 20), (30, 40)]
    local = split_doc_starts(doc_starts, ranges)
    assert local.tolist() == [0, 2, 10, 13]  # block starts at 0 and 10; documents at 12 -> 2 and 33 -> 13
    split = ConcatTokens([tokens[10:20], tokens[30:40]], ranges)
    ds = CroppedDocumentDataset(split, local, max_length=3, pad_id=0)
    assert pairs(ds)[1] == ([12, 13, 14], [13, 14, 15])


# ---- tables ----------------------------------------------------------------------------------------------------

SMS_ROWS = [
    ("ham", 'Go until jurong point, "crazy".. Available only'),
    ("spam", "FREE entry in 2 a wkly comp! Text FA to 87121"),
    ("ham", "Ok lar... Joking wif u oni..."),
    ("ham", "U dun say so early hor, U c already then say"),
    ("spam", 'WINNER!! As a valued "network" customer'),
]


def csv_cell(s):
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"') else s


def test_headerless_headed_tsv_and_named_csv_give_identical_records(tmp_path):
    expected = [{"text": t, "label": lab} for lab, t in SMS_ROWS]
    headerless = write(tmp_path / "SMSSpamCollection", "".join(f"{lab}\t{t}\n" for lab, t in SMS_ROWS))
    headed = write(tmp_path / "sms.tsv", "Label\tSMS\n" + "".join(f"{lab}\t{t}\n" for lab, t in SMS_ROWS))
    csv_rows = "".join(f"{i},{csv_cell(t)},{lab}\r\n" for i, (lab, t) in enumerate(SMS_ROWS))
    named = write(tmp_path / "sms.csv", "id,message,category\r\n" + csv_rows)
    jsonl = write_json_lines(tmp_path / "sms.jsonl", [{"sms": t, "label": lab} for lab, t in SMS_ROWS])
    assert read_labeled_table(headerless) == expected
    assert read_labeled_table(headed) == expected
    assert read_labeled_table(named) == expected
    assert read_labeled_table(jsonl) == expected
    assert read_labeled_table(headerless, text_column="1", label_column="0") == expected
    assert read_labeled_table(named, text_column="1", label_column="2") == expected


def test_header_detection_rules(tmp_path):
    rows = "".join(f"{lab}\t{t}\n" for lab, t in SMS_ROWS)
    unknown_names = write(tmp_path / "a.tsv", "kind\tbody\n" + rows)  # 'kind' never recurs in a label column
    with pytest.raises(UserError, match=r"cannot tell which column holds the text; available columns: 'kind', 'body'"):
        read_labeled_table(unknown_names)
    assert len(read_labeled_table(unknown_names, text_column="body", label_column="kind")) == 5
    assert len(read_labeled_table(unknown_names, text_column="1", label_column="0")) == 5
    forced = read_labeled_table(write(tmp_path / "b.tsv", rows), text_column="1", label_column="0", header=True)
    assert len(forced) == 4  # the first row was taken as names at the caller's word


def test_real_sms_collection_with_and_without_header(shared_data, tmp_path):
    real = shared_data / "SMSSpamCollection.tsv"
    records = read_labeled_table(real)
    assert len(records) == 5574
    assert {lab: sum(r["label"] == lab for r in records) for lab in ("ham", "spam")} == {"ham": 4827, "spam": 747}
    assert records[0]["text"].startswith("Go until jurong point")
    lines = real.read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[0].split("\t")[0] != "ham"  # the shared copy carries a header row ...
    published = write(tmp_path / "SMSSpamCollection", "".join(lines[1:]))  # ... the published file does not
    assert read_labeled_table(published) == records
    balanced = balance_undersample(records, seed=123)
    assert len(balanced) == 2 * 747


def test_kaggle_style_csv_with_v1_v2_and_empty_columns(tmp_path):
    f = write(tmp_path / "spam.csv", "v1,v2,,,\nham,hello there,,,\nspam,\"WIN, now\",,,\nham,see you,,,\n")
    assert read_labeled_table(f) == [
        {"text": "hello there", "label": "ham"},
        {"text": "WIN, now", "label": "spam"},
        {"text": "see you", "label": "ham"},
    ]


def test_table_errors_name_column_record_and_classes(tmp_path):
    f = write(tmp_path / "t.csv", "message,category\nhi,ham\nyo,spam\n")
    with pytest.raises(UserError, match=r"t\.csv has no column 'label'; available columns: 'message', 'category'"):
        read_labeled_table(f, label_column="label")
    empty = write(tmp_path / "e.tsv", "ham\thello\nspam\t \nham\tbye\nspam\tok\n")
    with pytest.raises(UserError, match=r"e\.tsv: record index 1 \(line 2\) has an empty text"):
        read_labeled_table(empty)
    one = write(tmp_path / "one.tsv", "ham\thello\nham\tbye\nham\tagain\n")
    with pytest.raises(UserError, match=r"only one class \('ham'\)"):
        read_labeled_table(one)
    tabs = write(tmp_path / "tabs.tsv", "ham\ta\tb\nspam\tc\nham\td\n")
    assert read_labeled_table(tabs)[0] == {"text": "a\tb", "label": "ham"}


def test_balance_and_split_records_are_reproducible():
    records = [{"text": f"t{i}", "label": "spam" if i % 5 == 0 else "ham"} for i in range(100)]
    balanced = balance_undersample(records, seed=1)
    counts = {lab: sum(r["label"] == lab for r in balanced) for lab in ("ham", "spam")}
    assert counts == {"ham": 20, "spam": 20}
    assert balanced == balance_undersample(records, seed=1)
    assert balanced != balance_undersample(records, seed=2)

    splits = split_records(records, (0.7, 0.1, 0.2), seed=123)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    texts = [r["text"] for k in ("train", "val", "test") for r in splits[k]]
    assert sorted(texts) == sorted(r["text"] for r in records) and len(set(texts)) == 100
    assert splits == split_records(records, (0.7, 0.1, 0.2), seed=123)
    assert splits["train"] != split_records(records, (0.7, 0.1, 0.2), seed=124)["train"]
    with pytest.raises(UserError, match="only 3 records: the val split"):
        split_records(records[:3], (0.7, 0.1, 0.2), seed=0)


def test_label_names_and_maps():
    names = label_names([{"label": "spam"}, {"label": "ham"}, {"label": "spam"}])
    assert names == ["ham", "spam"]
    assert label_maps(names) == ({0: "ham", 1: "spam"}, {"ham": 0, "spam": 1})


# ---- instructions ----------------------------------------------------------------------------------------------


def test_read_instructions_json_list_and_jsonl(tmp_path):
    recs = [{"instruction": "Add.", "input": "1+1", "output": "2"}, {"instruction": "Greet.", "output": "Hi", "x": 1}]
    expected = [
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Greet.", "input": "", "output": "Hi"},
    ]
    assert read_instructions(write(tmp_path / "i.json", json.dumps(recs, indent=4))) == expected
    assert read_instructions(write_json_lines(tmp_path / "i.jsonl", recs)) == expected


def test_malformed_instruction_json_names_the_record_index(tmp_path):
    good = {"instruction": "a", "input": "", "output": "b"}
    text = json.dumps([good, good], indent=4)[:-2] + ',\n    {"instruction": "c", "output": "d" "oops"}\n]'
    f = write(tmp_path / "bad.json", text)
    with pytest.raises(UserError, match=r"bad\.json: record index 2 is not valid JSON \(.* at line 12, column"):
        read_instructions(f)
    missing_comma = write(tmp_path / "mc.json", '[{"instruction": "a", "output": "b"}\n {"instruction": "c"}]')
    with pytest.raises(UserError, match=r"mc\.json: record index 1 is not valid JSON \(expected ',' or '\]' between"):
        read_instructions(missing_comma)
    not_a_list = write(tmp_path / "obj.json", '{"instruction": "a",\n "output": "b"}')
    with pytest.raises(UserError, match=r"obj\.json: record index 0 \(line 1\) is not valid JSON"):
        read_instructions(not_a_list)


def test_instruction_missing_field_names_record_and_field(tmp_path):
    f = write(tmp_path / "m.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(UserError, match=r"m\.json: record index 1 has no 'output'"):
        read_instructions(f)
    g = write_json_lines(tmp_path / "m.jsonl", [{"output": "b"}])
    with pytest.raises(UserError, match=r"m\.jsonl: record index 0 \(line 1\) has no 'instruction'"):
        read_instructions(g)


def test_real_instruction_data(shared_data):
    records = read_instructions(shared_data / "instruction-data.json")
    assert len(records) == 1100
    assert records[1] == {
        "instruction": "Edit the following sentence for grammar.",
        "input": "He go to the park every day.",
        "output": "He goes to the park every day.",
    }


# ---- collates --------------------------------------------------------------------------------------------------


def test_pad_collate_classification():
    batch = [{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": torch.tensor([8]), "label": 0}]
    out = pad_collate_classification(batch, pad_id=9)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.int64 for t in out.values())


def test_instruction_collate_matches_the_book():
    E = 50256
    batch = [
        {"input_ids": [0, 1, 2, 3, 4], "prompt_len": 2},
        {"input_ids": [5, 6], "prompt_len": 1},
        {"input_ids": [7, 8, 9], "prompt_len": 3},
    ]
    out = instruction_collate(batch, pad_id=E)
    inputs, targets = out["input_ids"], out["shift_labels"]
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]
    assert targets.tolist() == [[1, 2, 3, 4, E], [6, E, -100, -100, -100], [8, 9, E, -100, -100]]

    out = instruction_collate(batch, pad_id=E, mask_prompt=True, max_length=4)
    inputs, targets = out["input_ids"], out["shift_labels"]
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, E, E], [7, 8, 9, E]]
    assert targets.tolist() == [[-100, 2, 3, 4], [6, E, -100, -100], [-100, -100, E, -100]]


def test_the_pipeline_encodes_with_tiktoken():
    """The project's own byte-level BPE goes to tiktoken (same ids, all cores), or data preparation silently loses
    its speed."""
    from pipelines.data.tokens import tiktoken_encoding
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["some text to learn a few merges from, some text"] * 20, 300)
    assert tiktoken_encoding(tokenizer) is not None
