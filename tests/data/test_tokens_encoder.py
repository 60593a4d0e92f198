"""The pretraining encoder (``pipelines.data.tokens.encoder``: tiktoken built from the run's own vocabulary and
merges) gives exactly the ids of the ``tokenizers`` library: on real text, crafted strings (every whitespace code
point, contractions, numbers of many scripts, combining marks, emoji, long runs), a seeded fuzz, added tokens, and
through the shard pipeline."""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest

from pipelines.data.sources import iter_documents
from pipelines.data.tokens import (
    build_token_shards, byte_to_unicode, encoder, get_or_build_token_shards, load_meta, load_tokens, tiktoken_encoding,
)
from pipelines.runs.tokenizers import train_bpe_tokenizer

# code points that \s matches in GPT-2's pattern (Unicode White_Space), and neighbours that it does not
WHITESPACE = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)
SPACE_CANDIDATES = sorted(WHITESPACE | {0x1C, 0x1D, 0x1E, 0x1F, 0x180E, 0x200B, 0x2060, 0xFEFF})


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(pydoc_texts(), 3000)


@pytest.fixture(scope="module")
def fast(tokenizer):
    assert tiktoken_encoding(tokenizer) is not None, "tiktoken must take the project's own byte-level BPE"
    return encoder(tokenizer)


def reference(tokenizer, texts):
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def assert_same(fast, tokenizer, texts):
    texts = list(texts)
    mine = fast(texts)
    assert len(mine) == len(texts)
    for text, ours, theirs in zip(texts, mine, reference(tokenizer, texts)):
        assert list(ours) == theirs, f"ids differ for {text[:200]!r}"


# ---------------------------------------------------------------------------------------------------------------------
# (a) real text


def test_pydoc_texts(fast, tokenizer):
    texts = pydoc_texts()
    assert_same(fast, tokenizer, texts)
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


def test_gpt2_vocabulary(shared_data):
    """OpenAI's own vocabulary and merges (vocab.json + merges.txt) encode alike too."""
    from transformers import GPT2TokenizerFast

    folder = shared_data / "gpt2-tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip(f"{folder} holds no vocab.json")
    gpt2 = GPT2TokenizerFast.from_pretrained(str(folder))  # vocab.json + merges.txt
    assert tiktoken_encoding(gpt2) is not None
    texts = [*pydoc_texts()[:100], *crafted()[:400]]
    assert_same(encoder(gpt2), gpt2, texts)


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
    assert_same(fast, tokenizer, texts[::-1])


def test_code_point_classes_match_the_reference(fast, tokenizer):
    """Every assigned code point below U+3400, and a stride of the others, encodes as in `tokenizers` next to
    letters, digits, punctuation and spaces."""
    candidates = [*range(0x3400), *range(0x3400, 0x40000, 7), *range(0xE0000, 0xE0080), *range(0xE0100, 0xE01F0)]
    cps = [c for c in candidates if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    assert len(cps) > 30000
    probes = ["".join("a{0}1{0}.{0} {0}  {0}a\n".format(chr(c)) for c in cps[i : i + 500]) for i in range(0, len(cps), 500)]
    assert_same(fast, tokenizer, probes)


def test_unassigned_code_points(fast, tokenizer):
    unassigned = next(c for c in range(0x300, 0x10000) if unicodedata.category(chr(c)) == "Cn")
    assert_same(fast, tokenizer, [f"abc {chr(unassigned)} def", "plain text", "\U00040000 plane 4"])


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


def test_many_distinct_pieces(fast, tokenizer):
    rng = random.Random(2)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(60000)]
    assert_same(fast, tokenizer, [" ".join(words[i : i + 1000]) for i in range(0, len(words), 1000)])


# ---------------------------------------------------------------------------------------------------------------------
# (d) added tokens, lone surrogates, odd inputs


def test_added_token_text(fast, tokenizer):
    texts = ["a<|endoftext|>b", "<|endoftext|>", "x <|endoftext|> y<|endoftext|>", "<|endoftext", "plain"]
    assert_same(fast, tokenizer, texts)
    assert list(fast(["<|endoftext|>"])[0]) == [tokenizer.eos_token_id]


def test_lone_surrogate_same_error(fast, tokenizer):
    texts = ["fine", "bad \ud800 text"]
    with pytest.raises(Exception) as theirs:
        reference(tokenizer, texts)
    with pytest.raises(type(theirs.value)):
        fast(texts)


def test_empty_inputs(fast, tokenizer):
    assert fast([]) == []
    assert [list(a) for a in fast(["", "", "a", ""])] == reference(tokenizer, ["", "", "a", ""])


def test_large_ids():
    """Ids above 2**16: a byte-level BPE whose ids start high."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = byte_to_unicode()
    vocab = {chars[b]: 70000 + b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("in", "g")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 100000 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert tiktoken_encoding(tok) is not None
    texts = ["the thing is singing", "thethe ing", "ÿ\x00"]
    got = encoder(tok)(texts)
    assert [list(g) for g in got] == reference(tok, texts)
    assert max(max(g) for g in got) >= 100000


# ---------------------------------------------------------------------------------------------------------------------
# (e) tokenizers tiktoken does not reproduce: the tokenizer itself encodes


def test_other_tokenizers_use_tokenizers(tokenizer):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    with_normalizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    with_normalizer.normalizer = normalizers.NFKC()
    whitespace = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    prefix = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["dropout"] = 0.5
    dropout = Tokenizer.from_str(json.dumps(spec))
    for other in (with_normalizer, whitespace, prefix, dropout):
        assert tiktoken_encoding(other) is None
    texts = ["Ünïcödé ﬁ  two  spaces", "plain words"]
    for other in (with_normalizer, whitespace, prefix):
        assert encoder(other)(texts) == [e.ids for e in other.encode_batch(texts, add_special_tokens=False)]
    # and the plain backend itself is taken
    assert tiktoken_encoding(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())) is not None


def test_merge_order_that_is_not_the_id_order_is_refused():
    """tiktoken's ranks are the token ids: a vocabulary whose ids do not follow its merges is not reproduced."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = byte_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"ab": 257, "bc": 256, "abc": 258})  # the merge (b, c) comes second but has the lower id
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("b", "c"), ("ab", "c")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    texts = ["abc abcabc bca"]
    assert encoder(tok)(texts) == reference(tok, texts)


# ---------------------------------------------------------------------------------------------------------------------
# (f) the shard pipeline


def test_shards_identical_with_and_without_tiktoken(tokenizer, tmp_path, monkeypatch):
    from pipelines.data import tokens

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = pydoc_texts()[:60] + ["has <|endoftext|> inside", "x" * 5000 + " long piece", "naïve 🙂 ٣"]
    texts += [" ".join(fuzz_texts(40, seed=4))]
    for i, text in enumerate(texts):
        (corpus / f"doc_{i:03d}.txt").write_text(text, encoding="utf-8")
    fast_dir = get_or_build_token_shards(str(corpus), tokenizer, tmp_path / "fast", shard_tokens=5000)
    monkeypatch.setattr(tokens, "tiktoken_encoding", lambda tok: None)
    slow_dir = get_or_build_token_shards(str(corpus), tokenizer, tmp_path / "slow", shard_tokens=5000)

    fast_meta, slow_meta = load_meta(fast_dir), load_meta(slow_dir)
    assert fast_meta["num_tokens"] == slow_meta["num_tokens"] and fast_meta["shards"] == slow_meta["shards"]
    assert len(fast_meta["shards"]) > 1
    assert np.array_equal(fast_meta["doc_starts"], slow_meta["doc_starts"])
    for shard in fast_meta["shards"]:
        assert (fast_dir / shard["file"]).read_bytes() == (slow_dir / shard["file"]).read_bytes()
    expected = []
    for ids in reference(tokenizer, iter_documents(str(corpus))):  # as read: newlines translated
        expected += ids + [tokenizer.eos_token_id]
    assert np.asarray(load_tokens(fast_dir), dtype=np.int64).tolist() == expected


def test_build_token_shards_with_arrays(tmp_path):
    docs = ["a", "bb", "ccc"]

    def as_arrays(batch):
        return [np.arange(1, len(d) + 1, dtype=np.uint32) for d in batch]

    def as_lists(batch):
        return [list(range(1, len(d) + 1)) for d in batch]

    a = build_token_shards(docs, as_arrays, 0, tmp_path / "a", vocab_size=10, batch_chars=2)
    b = build_token_shards(docs, as_lists, 0, tmp_path / "b", vocab_size=10, batch_chars=2)
    assert np.asarray(load_tokens(a)).tolist() == [1, 0, 1, 2, 0, 1, 2, 3, 0]
    assert np.asarray(load_tokens(b)).tolist() == np.asarray(load_tokens(a)).tolist()
    assert load_meta(a)["doc_starts"].tolist() == [0, 2, 5]

    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_token_shards(docs, lambda batch: [np.array([12], dtype=np.uint32) for _ in batch], 0,
                                tmp_path / "c", vocab_size=10)
