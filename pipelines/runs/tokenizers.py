"""Tokenizers: open a saved one (GPT-2's BPE or any other), train a byte-level BPE of one's own, save one so that
every transformers from 4.57 on opens it, and count the bytes its tokens stand for.

GPT-2's tokenizer (Radford et al., 2019, section 2.2) is byte-level BPE (Sennrich et al., 2016, "Neural Machine
Translation of Rare Words with Subword Units"): text is split by a regular expression into words, numbers,
punctuation runs and whitespace, each piece is read as UTF-8 bytes mapped onto 256 printable characters, and merges
learned from a corpus join frequent neighbours.  Every byte is in the base vocabulary, so any text encodes without an
unknown token and decodes back to exactly itself.  ``<|endoftext|>`` is the one special token; it separates documents
and serves as end, start and padding token.  ``train_bpe_tokenizer`` builds that recipe with the ``tokenizers``
library and saves it so that ``AutoTokenizer.from_pretrained(folder)`` opens it.

**Bits per byte** (``bpb``, nanochat's ``val_bpb``) make a loss comparable across tokenizers: a mean loss in nats
divided by ln 2 and by the UTF-8 bytes per scored token (``loss / ln 2 x tokens / bytes``).  Special tokens (the
end-of-text separator) count 0 bytes while their loss stays in the numerator.  For a byte-level BPE every token is a
fixed string of bytes, so the byte count of any token sequence is a sum over a per-token table
(:func:`token_byte_lengths`), exact even when a window starts or ends inside a multi-byte character; other tokenizers
fall back to decoding.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast

from ..data.tokens import byte_to_unicode
from ..errors import UserError, describe_type
from ..fs import atomic_dir, atomic_write_json
from ..hub import offline_flag

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


# every file a saved tokenizer may consist of (what a publish uploads)
TOKENIZER_SAVE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)



EOS_TOKEN = "<|endoftext|>"


MIN_VOCAB_SIZE = 257  # the 256 byte symbols plus <|endoftext|>


def strip_local_files_only(folder) -> None:
    """Remove ``"local_files_only"`` from ``tokenizer_config.json`` (written when saving under HF_HUB_OFFLINE=1).

    Left in, a published tokenizer would refuse to download anything for its users.
    """
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("local_files_only", None) is not None:
        atomic_write_json(path, data)


def set_pad_to_eos(tokenizer):
    """GPT-2-style tokenizers have no padding token: pad with end-of-text, so pipelines and batches work."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenizer_error(path: Path, err: Exception) -> str:
    """One line for a tokenizer folder that does not load: the file at fault when it can be told, and the cause."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            return (
                f"cannot load the tokenizer in {path}: {name} is not valid JSON, so the file is damaged or cut short "
                "(an interrupted copy or save?): copy the folder again or re-save the tokenizer"
            )
        except OSError:
            continue
    return (
        f"cannot load the tokenizer in {path} ({type(err).__name__}: {text}): its files are damaged or from an "
        "unsupported tokenizer; copy the folder again or re-save the tokenizer"
    )


def open_tokenizer(spec):
    """A tokenizer from a local folder or a Hub id (e.g. ``openai-community/gpt2``), with pad = end-of-text.

    A Hub id that is not in the local cache needs the network; offline that is a ``UserError``.
    """
    path = Path(str(spec)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"tokenizer {path} is a file: pass the folder that holds tokenizer.json")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UserError(
                f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): pass a folder with a saved "
                "tokenizer, or a Hub id such as openai-community/gpt2"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
        except Exception as err:  # a damaged tokenizer.json raises the tokenizers library's bare Exception
            raise UserError(_tokenizer_error(path, err)) from None
        return set_pad_to_eos(tokenizer)
    offline = offline_flag(("HF_HUB_OFFLINE",)) is not None
    try:
        # no code from the network without the user's say-so: a Hub tokenizer must be a standard class
        tokenizer = AutoTokenizer.from_pretrained(str(spec), trust_remote_code=False)
    except Exception as err:  # offline, no connection, unknown repo: transformers raises OSError or others
        if offline or "connect" in str(err).lower() or "offline" in str(err).lower():
            raise UserError(
                f"tokenizer {spec} is not a local folder and is not in the Hugging Face cache; downloading it needs "
                "the network (HF_HUB_OFFLINE is set or the Hub is unreachable): pass a local folder instead"
            ) from err
        raise UserError(f"cannot load tokenizer {spec}: no such local folder, and the Hub says: {err}") from err
    return set_pad_to_eos(tokenizer)


def build_bpe_tokenizer_object(vocab_size: int):
    """An untrained GPT-2-style pipeline and its trainer (from the ``tokenizers`` library).

    * no normaliser: the text is encoded as given, so decoding returns it byte for byte;
    * ``ByteLevel`` pre-tokenizer with GPT-2's regular expression and no added prefix space;
    * byte-level BPE model; ``ByteLevel`` decoder (bytes back to UTF-8);
    * ``ByteLevel`` post-processor with offsets kept as they are (GPT-2's choice).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def wrap_tokenizer(tokenizer_object, model_max_length: int | None = None):
    """A ``GPT2TokenizerFast`` around a ``tokenizers.Tokenizer``, end-of-text as eos = bos = unk = pad.

    GPT-2's own class, so every transformers from 4.57 on loads the saved folder with the same ids (5.x's generic
    ``TokenizersBackend`` is unknown to 4.x).  ``model_max_length`` should be the model's context, so that
    ``truncation=True`` cuts there.
    """
    kwargs = dict(
        tokenizer_object=tokenizer_object,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,  # would turn " ." into "." and break the round trip
        add_prefix_space=False,
    )
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return GPT2TokenizerFast(**kwargs)


def portable_tokenizer(tokenizer, context: int):
    """``tokenizer`` ready to be saved into a model folder: ``model_max_length`` = the model's ``context``, pad =
    end-of-text, and a byte-level BPE held in a generic fast class re-wrapped as ``GPT2TokenizerFast`` (same
    pipeline, special tokens and chat template)."""
    if not isinstance(tokenizer, GPT2TokenizerFast) and _is_byte_level_bpe(tokenizer):
        special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        chat_template = tokenizer.chat_template
        tokenizer = GPT2TokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer,
            clean_up_tokenization_spaces=False,
            add_prefix_space=False,
            **{name: value for name, value in special.items() if value is not None},
        )
        tokenizer.chat_template = chat_template
    tokenizer.model_max_length = context
    return set_pad_to_eos(tokenizer)


def _is_byte_level_bpe(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return spec.get("model", {}).get("type") == "BPE" and pre.get("type") == "ByteLevel"


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir=None, overwrite: bool = False, model_max_length: int | None = None
):
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts``; optionally save it (atomically) to ``out_dir``.

    ``vocab_size`` counts the 256 byte symbols, the merges and ``<|endoftext|>``; a corpus too small to learn that
    many merges yields a smaller vocabulary (a warning says so).  Returns the ``PreTrainedTokenizerFast``.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} entries "
            "(256 bytes + <|endoftext|>); GPT-2 uses 50257"
        )
    out = None
    if out_dir is not None:
        out = Path(out_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise UserError(
                f"--out {out} is a file, not a folder: choose a folder for the tokenizer (--overwrite replaces a "
                "folder, never a file)"
            )
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise UserError(
                f"output folder {out} already exists and is not empty: choose another --out, or pass --overwrite to "
                "replace it"
            )
    tokenizer_object, trainer = build_bpe_tokenizer_object(vocab_size)
    count = {"docs": 0}

    def counted(items: Iterable[str]) -> Iterator[str]:
        for text in items:
            if not isinstance(text, str):
                raise UserError(f"document {count['docs'] + 1} is not text but {describe_type(text)}")
            count["docs"] += 1
            yield text

    tokenizer_object.train_from_iterator(counted(texts), trainer=trainer)
    if count["docs"] == 0:
        raise UserError("no text to train the tokenizer on: the data holds no documents")
    got = tokenizer_object.get_vocab_size()
    if got < vocab_size:
        print(
            f"warning: the corpus allowed only {got} of the {vocab_size} vocabulary entries asked for "
            "(too few repeated pairs to merge); give more text for a full vocabulary",
            file=sys.stderr,
        )
    tokenizer = wrap_tokenizer(tokenizer_object, model_max_length=model_max_length)
    if out is not None:
        save_tokenizer(tokenizer, out, overwrite=True)
    return tokenizer


def save_tokenizer(tokenizer, out_dir, overwrite: bool = False) -> Path:
    """Save ``tokenizer`` into ``out_dir`` atomically, without the ``local_files_only`` flag."""
    out = Path(out_dir).expanduser()
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"output folder {out} already exists and is not empty: choose another --out, or pass --overwrite"
        )
    with atomic_dir(out, overwrite=True) as tmp:
        tokenizer.save_pretrained(tmp)
        strip_local_files_only(tmp)
    return out



def save_tokenizer_plain(tokenizer, folder: Path) -> str:
    """Save ``tokenizer`` so that transformers 4.x and 5.x open it with a built-in class; returns that class.

    transformers 5 records its generic backend as ``TokenizersBackend``, a name 4.x does not know.  A GPT-2-style
    byte-level BPE is recorded as ``GPT2TokenizerFast`` (4.x's fast GPT-2 tokenizer; 5.x maps it to its
    ``GPT2Tokenizer``); another tokenizer.json-backed tokenizer as ``PreTrainedTokenizerFast``.
    """
    tokenizer.save_pretrained(str(folder))
    strip_local_files_only(folder)
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    name = data.get("tokenizer_class")
    if _is_byte_level_bpe(tokenizer):
        name = "GPT2TokenizerFast"
    elif name in (None, "TokenizersBackend") and (folder / "tokenizer.json").is_file():
        name = "PreTrainedTokenizerFast"
    data["tokenizer_class"] = name
    data.pop("auto_map", None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return name



def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """``loss_nats / ln 2 * tokens / n_bytes``; NaN when there are no bytes."""
    if n_bytes <= 0 or not math.isfinite(loss_nats):
        return float("nan")
    return loss_nats / math.log(2) * tokens / n_bytes


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    if decoder.get("type") == "Sequence":
        return any(d.get("type") == "ByteLevel" for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """UTF-8 byte length of every token id (``int64``, ``len(tokenizer)`` entries) for a byte-level tokenizer, else
    ``None``.  Special tokens count 0; added tokens that are not special count the bytes of their text."""
    table = None
    if _is_byte_level(tokenizer):
        symbols = set(byte_to_unicode().values())
        special = set(tokenizer.all_special_ids)
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        table = np.zeros(len(tokenizer), dtype=np.int64)
        for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if i in special or token is None:
                continue
            if i in added:
                table[i] = len(added[i].encode("utf-8"))
            elif all(ch in symbols for ch in token):
                table[i] = len(token)  # one symbol per byte
            else:  # not a byte-level token after all: decode instead
                table = None
                break
    return table


class ByteCounter:
    """``counter(ids)``: the UTF-8 bytes of the text token ids decode to (special tokens: none).  The per-token
    table is built once per counter."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table = token_byte_lengths(tokenizer)

    def __call__(self, ids) -> int:
        if self.table is not None:
            total = 0
            for start in range(0, len(ids), 1 << 22):  # in chunks: a long stream is never copied whole
                chunk = np.asarray(ids[start : start + (1 << 22)], dtype=np.int64)
                total += int(self.table[chunk].sum())
            return total
        text = self.tokenizer.decode(np.asarray(ids, dtype=np.int64).tolist(), skip_special_tokens=True)
        return len(text.encode("utf-8"))


def count_bytes(tokenizer, ids) -> int:
    """UTF-8 bytes of the text the token ids decode to (special tokens: none)."""
    return ByteCounter(tokenizer)(ids)


def bytes_per_token(tokenizer, tokens, sample_tokens: int = 16_000_000, pieces: int = 64) -> float:
    """Mean UTF-8 bytes per token of a token stream (a split of the pretraining corpus): over the whole stream when
    it holds at most ``sample_tokens`` tokens, else over ``pieces`` evenly spaced stretches that add up to that."""
    n = len(tokens)
    if n == 0:
        return float("nan")
    counter = ByteCounter(tokenizer)
    if n <= sample_tokens:
        return counter(tokens[:]) / n
    width = sample_tokens // pieces
    starts = np.linspace(0, n - width, pieces).astype(np.int64)
    total = sum(counter(tokens[int(s) : int(s) + width]) for s in starts)
    return total / (width * pieces)


def bpb_from_ratio(loss_nats: float, bytes_per_token_ratio: float) -> float:
    """Bits per byte from a mean loss and the bytes-per-token ratio of the text it was measured on."""
    if not (bytes_per_token_ratio > 0) or not math.isfinite(loss_nats):
        return float("nan")
    return loss_nats / math.log(2) / bytes_per_token_ratio


