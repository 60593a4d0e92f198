"""The trained byte-level BPE tokenizer: exact round trips on arbitrary text, special tokens, saving and loading."""

import argparse
import json
import random

import pytest
from transformers import AutoTokenizer

from pipelines.commands import train_tokenizer
from pipelines.runs.tokenizers import EOS_TOKEN, open_tokenizer, train_bpe_tokenizer
from pipelines.errors import UserError

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Il était une fois un café où l'on parlait français, naïvement. ",
    "Spam: WINNER!! You've won a £1000 prize, call 0800-123-456 now. ",
    "def add(a, b):\n    return a + b\n\n",
    "数字和中文文本，还有表情 🙂🚀 混在一起。",
] * 40

SAMPLES = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "Zoë's naïve café — déjà vu; Ångström, ﬁ ligature",
    "emoji 👩‍👩‍👧‍👦 family, flags 🇫🇷🇯🇵, skin tone 👍🏽, 🙂",
    "日本語のテキスト and Ελληνικά and русский and עברית",
    "combining e\u0301 vs é, zero\u200bwidth, NUL-free control \x07 bell",
    "text<|endoftext|>next document",
    "",
    " ",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "bpe"
    tokenizer = train_bpe_tokenizer(CORPUS, 320, out_dir=folder)
    return tokenizer, folder


def random_unicode(rng, n):
    """Random code points from across the planes (no surrogates), so no text can fall outside the byte alphabet."""
    chars = []
    for _ in range(n):
        while True:
            cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF),
                             rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x10FFFF), rng.choice([9, 10, 13, 32])])
            if not 0xD800 <= cp <= 0xDFFF:
                break
        chars.append(chr(cp))
    return "".join(chars)


def test_vocab_size_and_special_tokens(trained):
    tokenizer, folder = trained
    assert len(tokenizer) == 320
    loaded = AutoTokenizer.from_pretrained(folder)
    assert len(loaded) == 320
    for tok in (tokenizer, loaded):
        assert tok.eos_token == tok.pad_token == tok.bos_token == EOS_TOKEN
        assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(EOS_TOKEN)
    # the special token is one id, never split into pieces
    assert loaded("a<|endoftext|>b")["input_ids"].count(loaded.eos_token_id) == 1
    # no prefix space is added: "Hello" at the start and " Hello" are different tokens
    assert loaded("Hello")["input_ids"] != loaded(" Hello")["input_ids"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config


def test_round_trip_arbitrary_text(trained):
    tokenizer, folder = trained
    loaded = AutoTokenizer.from_pretrained(folder)
    rng = random.Random(0)
    texts = SAMPLES + [random_unicode(rng, rng.randint(1, 80)) for _ in range(200)]
    for text in texts:
        for tok in (tokenizer, loaded):
            ids = tok(text)["input_ids"]
            assert tok.decode(ids) == text, repr(text)
            assert all(0 <= i < 320 for i in ids)
    # merges were learned: frequent words take fewer tokens than bytes
    assert len(loaded("The quick brown fox")["input_ids"]) < len("The quick brown fox".encode())
    # an emoji unseen in training still encodes byte by byte and decodes back
    assert loaded.decode(loaded("🦜")["input_ids"]) == "🦜"


def test_regex_pre_tokenization_like_gpt2(trained):
    tokenizer, _ = trained
    pieces = [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Hello world's 123!!")]
    # GPT-2's pattern: words with their leading space (byte-mapped to 'Ġ'), contractions and digits apart
    assert pieces == ["Hello", "Ġworld", "'s", "Ġ123", "!!"]


def test_cli_and_load_tokenizer(tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    for i, text in enumerate(CORPUS[:5]):
        (data / f"doc{i}.txt").write_text(text * 20, encoding="utf-8")
    parser = train_tokenizer.add_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    train_tokenizer.run(parser.parse_args(["--data", str(data), "--vocab-size", "300", "--out", str(out)]))
    assert "300 tokens" in capsys.readouterr().out
    tok = open_tokenizer(str(out))
    assert len(tok) == 300 and tok.pad_token == EOS_TOKEN
    # an existing output folder is kept unless --overwrite
    with pytest.raises(UserError, match="--overwrite"):
        train_tokenizer.run(parser.parse_args(["--data", str(data), "--vocab-size", "300", "--out", str(out)]))
    train_tokenizer.run(parser.parse_args(["--data", str(data), "--vocab-size", "280", "--out", str(out),
                                            "--overwrite"]))
    assert len(open_tokenizer(str(out))) == 280


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="--vocab-size 100 is too small.*257"):
        train_bpe_tokenizer(["some text"], 100)
    with pytest.raises(UserError, match="no text"):
        train_bpe_tokenizer([], 300)
    with pytest.raises(UserError, match="has no tokenizer"):
        open_tokenizer(str(tmp_path))
    # a Hub id while offline (tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(UserError, match="needs the network"):
        open_tokenizer("gpt-scratch-tests/no-such-tokenizer")
