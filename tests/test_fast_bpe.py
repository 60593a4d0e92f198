"""The C byte-level BPE (pipelines._bpe via pipelines.fast_bpe) gives exactly the ids of the `tokenizers` library."""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest

from pipelines import data, fast_bpe
from pipelines.fast_bpe import WHITESPACE, FastBPE

pytestmark = pytest.mark.skipif(
    fast_bpe._bpe is None, reason=f"the C extension pipelines._bpe is not built ({fast_bpe._IMPORT_ERROR})"
)

# every code point that might be whitespace to Oniguruma, and the ones that are not
SPACE_CANDIDATES = sorted(WHITESPACE | {0x1C, 0x1D, 0x1E, 0x1F, 0x180E, 0x200B, 0x2060, 0xFEFF})


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def tokenizer():
    from pipelines.tokenization import train_bpe_tokenizer

    return train_bpe_tokenizer(pydoc_texts(), 3000)


@pytest.fixture(scope="module")
def fast(tokenizer):
    enc = FastBPE.from_tokenizer(tokenizer)
    assert enc is not None
    return enc


def reference(tokenizer, texts):
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def assert_same(fast, tokenizer, texts):
    texts = list(texts)
    mine = fast.encode_batch(texts)
    assert len(mine) == len(texts)
    for text, ours, theirs in zip(texts, mine, reference(tokenizer, texts)):
        assert isinstance(ours, np.ndarray) and ours.dtype == np.uint32
        assert ours.tolist() == theirs, f"ids differ for {text[:200]!r}"


def reference_ends(text: str) -> list[int]:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return [end for _, (_, end) in pre.pre_tokenize_str(text)]


# ---------------------------------------------------------------------------------------------------------------------
# (a) real text


def test_pydoc_texts(fast, tokenizer):
    texts = pydoc_texts()
    assert_same(fast, tokenizer, texts)
    # several threads on one call, long documents cut into work items (> 64K code points)
    assert_same(fast, tokenizer, ["\n\n".join(texts[:400]), "".join(texts[400:]), *texts[:30]])


def test_shared_data(fast, tokenizer, shared_data):
    texts = [p.read_text(encoding="utf-8") for p in sorted(shared_data.glob("*.txt"))]
    instruction = shared_data / "instruction-data.json"
    if instruction.is_file():
        raw = instruction.read_text(encoding="utf-8")
        texts.append(raw)
        texts += [value for rec in json.loads(raw) for value in rec.values() if isinstance(value, str)]
    sms = shared_data / "SMSSpamCollection.tsv"
    if sms.is_file():
        raw = sms.read_text(encoding="utf-8")
        texts += [raw, *raw.splitlines()]
    assert len(texts) > 3
    assert_same(fast, tokenizer, texts)


# ---------------------------------------------------------------------------------------------------------------------
# (b) crafted strings


def crafted() -> list[str]:
    out = ["", " ", "  ", "\n", "a", "'", "''", "'s", "\r\n", "\r\n\r\n", "x\r\ny", "\x00", "a\x00b", "\x00\x00 \x00"]
    for cp in SPACE_CANDIDATES:
        w = chr(cp)
        for after in ("word", "123", "!?", "", " ", w, "\n", "'s"):
            out += [w + after, "x" + w + after, "x " + w + after, "x" + w + w + after, w + " " + after]
    out += [
        "a  b", "a   b", "a    b", "a \n b", "a\n\n  b", "a\t \tb", " \t\n\r\x0b\x0c x", "end   ", "end \n", "  \n\n",
        "it's I'm we're they've he'll she'd don't", "IT'S I'M WE'RE 'S 'T 'RE 'Ve 'LL 'D", "'sa 'tb 'red 'lll",
        "x's x'S x''s ...'s  's \t's", "rock'n'roll o'clock 'quoted' \"double\"", "'", "a'", "'re", "'r", "'l", "'ll'",
        "٠١٢٣ ٤٥ ۱۲۳ ४५६ ১২ ๑๒๓ ０１２ ²³¹ ½¼ ⅫⅣ 𝟘𝟙", "x١٢ 12٣ a1b2", "你好，世界。こんにちは、カタカナ 한국어 漢字",
        "🙂👍🏽👨‍👩‍👧 🇫🇷 ☕️ ✔︎", "e\u0301 a\u0308\u0323 \u0301x \u0301 \u0301\u0301", "Ünïcödé naïve café Привет Γειά",
        "العربية עברית हिन्दी ไทย", "tab\tsep\tvalues\n", "mixed 123abc abc123 1.5e-3 $5,000.00 #hash @at",
        "«quoted» „de“ ‹›", "\u00a0nbsp \u3000ideo \u2028line \u2029para \u0085nel", "\ufeffBOM", "zero\u200bwidth",
        "\U000f0000 private \ue000 use", "x" * 5000, " " * 5000, "1" * 5000, "!" * 5000, "\n" * 5000,
        "ab " * 3000, "word " + "a" * 4096 + " word", "é" * 3000, "\t" * 4097 + "x", "x" + " " * 4200 + "y",
    ]
    return out


def test_crafted_strings(fast, tokenizer):
    texts = crafted()
    assert_same(fast, tokenizer, texts)
    assert_same(fast, tokenizer, texts[::-1])  # again, with warm piece caches


def test_crafted_splits(fast):
    for text in crafted():
        ends = fast.encoder.split(text)
        if ends is None:  # the document would go to the reference tokenizer
            unsure = any(ord(c) >= 0x40000 or unicodedata.category(c) in ("Cn", "Cs") for c in text)
            assert unsure or len(text.encode("utf-8")) > fast_bpe._bpe.PIECE_LIMIT
            continue
        assert ends == reference_ends(text), repr(text[:100])


def test_long_pieces_go_to_the_reference(fast):
    limit = fast_bpe._bpe.PIECE_LIMIT
    ids, lengths = fast.encoder.encode(["a" * (limit + 1), "a" * limit, " " * (limit + 5) + "x", "é" * (limit // 2 + 1)])
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[0] == -1
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[1] > 0
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[2:] == [-1, -1]


def test_code_point_classes_match_the_reference(fast):
    """Every assigned code point below U+3400, and a stride of the others, splits as in `tokenizers`."""
    candidates = [*range(0x3400), *range(0x3400, 0x40000, 7), *range(0xE0000, 0xE0080), *range(0xE0100, 0xE01F0)]
    cps = [c for c in candidates if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    assert len(cps) > 30000
    probe = "".join("a{0}1{0}.{0} {0}  {0}a\n".format(chr(c)) for c in cps)
    ends = fast.encoder.split(probe)
    assert ends is not None
    if ends != reference_ends(probe):
        bad = [hex(c) for c in cps if fast.encoder.split("a{0}1{0}.{0} {0}  {0}a\n".format(chr(c))) !=
               reference_ends("a{0}1{0}.{0} {0}  {0}a\n".format(chr(c)))]
        pytest.fail(f"code points classed differently from tokenizers: {bad[:20]}")


def test_unassigned_code_points_go_to_the_reference(fast, tokenizer):
    unassigned = next(c for c in range(0x300, 0x10000) if unicodedata.category(chr(c)) == "Cn")
    texts = [f"abc {chr(unassigned)} def", "plain text", "\U00040000 plane 4"]
    _, lengths = fast.encoder.encode(texts)
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[0] == -1
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[1] > 0
    assert np.frombuffer(lengths, dtype=np.int64).tolist()[2] == -1
    assert_same(fast, tokenizer, texts)


# ---------------------------------------------------------------------------------------------------------------------
# (c) random fuzz


ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3
    + list("0123456789") * 2
    + list("'''sdtmlrve") * 2
    + list(" " * 20)
    + [chr(c) for c in SPACE_CANDIDATES]
    + list("\n\n\r\t!?.,;:-_()[]{}\"#$%&*+/<=>@\\^`|~")
    + list("éüßñçøÆŒ") + list("Ωπλжщ") + list("你好世界日本語한국") + list("٠١٢४५²½Ⅻ")
    + ["🙂", "👍", "🏽", "\u200d", "\u0301", "\u0308", "\x00", "\x7f", "\ue000", "\u00ad"]
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "  ", "\r\n", " '"]
)


def fuzz_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_fuzz_ids(fast, tokenizer):
    texts = fuzz_texts(4000)
    assert_same(fast, tokenizer, texts)
    assert_same(fast, tokenizer, [" ".join(texts[i : i + 50]) for i in range(0, len(texts), 50)])


def test_fuzz_splits(fast):
    for text in fuzz_texts(3000, seed=1):
        assert fast.encoder.split(text) == reference_ends(text), repr(text)


def test_many_distinct_pieces_overflow_the_cache(fast, tokenizer):
    rng = random.Random(2)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(60000)]
    assert_same(fast, tokenizer, [" ".join(words[i : i + 1000]) for i in range(0, len(words), 1000)])


# ---------------------------------------------------------------------------------------------------------------------
# (d) added tokens, lone surrogates, odd inputs


def test_added_token_text(fast, tokenizer):
    texts = ["a<|endoftext|>b", "<|endoftext|>", "x <|endoftext|> y<|endoftext|>", "<|endoftext", "plain"]
    assert_same(fast, tokenizer, texts)
    assert fast.encode_batch(["<|endoftext|>"])[0].tolist() == [tokenizer.eos_token_id]


def test_lone_surrogate_same_error(fast, tokenizer):
    texts = ["fine", "bad \ud800 text"]
    with pytest.raises(Exception) as theirs:
        reference(tokenizer, texts)
    with pytest.raises(type(theirs.value)):
        fast.encode_batch(texts)
    _, lengths = fast.encoder.encode(["x\udfffy"])
    assert np.frombuffer(lengths, dtype=np.int64).tolist() == [-1]


def test_empty_inputs(fast, tokenizer):
    assert fast.encode_batch([]) == []
    out = fast.encode_batch(["", "", "a", ""])
    assert [a.tolist() for a in out] == reference(tokenizer, ["", "", "a", ""])
    ids, lengths = fast.encoder.encode([])
    assert ids == b"" and lengths == b""
    with pytest.raises(TypeError):
        fast.encoder.encode(["ok", b"bytes"])


def test_many_threads(tokenizer):
    enc = FastBPE.from_tokenizer(tokenizer, num_threads=5)
    assert enc is not None and enc.num_threads == 5
    texts = pydoc_texts()[:200] + fuzz_texts(300, seed=3)
    assert_same(enc, tokenizer, texts)


def test_large_ids(tmp_path):
    """Ids above 2**16: a byte-level BPE whose ids start high."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = fast_bpe.byte_to_unicode()
    vocab = {chars[b]: 70000 + b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("in", "g")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 100000 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    enc = FastBPE.from_tokenizer(tok)
    assert enc is not None
    texts = ["the thing is singing", "thethe ing", "ÿ\x00"]
    got = enc.encode_batch(texts)
    assert [g.tolist() for g in got] == reference(tok, texts)
    assert max(int(g.max()) for g in got) >= 100000


# ---------------------------------------------------------------------------------------------------------------------
# (e) tokenizers the C code does not reproduce


def test_refuses_other_tokenizers(tokenizer):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    with_normalizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    with_normalizer.normalizer = normalizers.NFKC()
    assert FastBPE.from_tokenizer(with_normalizer) is None

    whitespace = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert FastBPE.from_tokenizer(whitespace) is None

    prefix = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert FastBPE.from_tokenizer(prefix) is None

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["dropout"] = 0.5
    assert FastBPE.from_tokenizer(Tokenizer.from_str(json.dumps(spec))) is None

    truncating = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    truncating.enable_truncation(8)
    assert FastBPE.from_tokenizer(truncating) is None

    # and the plain backend itself is accepted
    assert FastBPE.from_tokenizer(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())) is not None


def test_refuses_without_extension(tokenizer, monkeypatch):
    monkeypatch.setattr(fast_bpe, "_bpe", None)
    assert FastBPE.from_tokenizer(tokenizer) is None


# ---------------------------------------------------------------------------------------------------------------------
# (f) the shard pipeline


def test_shards_identical_with_and_without_fast_encoder(tokenizer, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = pydoc_texts()[:60] + ["has <|endoftext|> inside", "x" * 5000 + " long piece", "naïve 🙂 ٣"]
    texts += [" ".join(fuzz_texts(40, seed=4))]
    for i, text in enumerate(texts):
        (corpus / f"doc_{i:03d}.txt").write_text(text, encoding="utf-8")

    used = []
    real = FastBPE.from_tokenizer.__func__

    def spy(cls, tok, num_threads=None):
        enc = real(cls, tok, num_threads)
        used.append(enc)
        return enc

    monkeypatch.setattr(FastBPE, "from_tokenizer", classmethod(spy))
    fast_dir = data.get_or_build_token_shards(str(corpus), tokenizer, tmp_path / "fast", shard_tokens=5000)
    assert used and isinstance(used[0], FastBPE)

    monkeypatch.setattr(FastBPE, "from_tokenizer", classmethod(lambda cls, tok, num_threads=None: None))
    slow_dir = data.get_or_build_token_shards(str(corpus), tokenizer, tmp_path / "slow", shard_tokens=5000)

    fast_meta, slow_meta = data.load_meta(fast_dir), data.load_meta(slow_dir)
    assert fast_meta["num_tokens"] == slow_meta["num_tokens"] and fast_meta["shards"] == slow_meta["shards"]
    assert len(fast_meta["shards"]) > 1
    assert np.array_equal(fast_meta["doc_starts"], slow_meta["doc_starts"])
    for shard in fast_meta["shards"]:
        assert (fast_dir / shard["file"]).read_bytes() == (slow_dir / shard["file"]).read_bytes()
    expected = []
    for ids in reference(tokenizer, data.iter_documents(str(corpus))):  # as read: newlines translated
        expected += ids + [tokenizer.eos_token_id]
    assert np.asarray(data.load_tokens(fast_dir), dtype=np.int64).tolist() == expected


def test_build_token_shards_with_arrays(tmp_path):
    docs = ["a", "bb", "ccc"]

    def as_arrays(batch):
        return [np.arange(1, len(d) + 1, dtype=np.uint32) for d in batch]

    def as_lists(batch):
        return [list(range(1, len(d) + 1)) for d in batch]

    a = data.build_token_shards(docs, as_arrays, 0, tmp_path / "a", vocab_size=10, batch_chars=2)
    b = data.build_token_shards(docs, as_lists, 0, tmp_path / "b", vocab_size=10, batch_chars=2)
    assert np.asarray(data.load_tokens(a)).tolist() == [1, 0, 1, 2, 0, 1, 2, 3, 0]
    assert np.asarray(data.load_tokens(b)).tolist() == np.asarray(data.load_tokens(a)).tolist()
    assert data.load_meta(a)["doc_starts"].tolist() == [0, 2, 5]

    with pytest.raises(ValueError, match="outside the vocabulary"):
        data.build_token_shards(docs, lambda batch: [np.array([12], dtype=np.uint32) for _ in batch], 0,
                                tmp_path / "c", vocab_size=10)
