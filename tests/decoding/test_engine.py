"""The decoding engine (``pipelines/engine.py``) against the oracles it must agree with.

The oracle for greedy decoding is ``GenerationMixin.generate`` on the same model, left padding included; for
sampling, transformers' own logits warpers and full forward passes; for the buffer, ``DynamicCache``.  Tiny configs,
so the suite stays fast.
"""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.decoding.engine import CACHE_ARGUMENT, Engine, KVBuffer, Request, cut_at_stop_strings, decode_incrementally, sample_next_token

VOCAB = 96


def tiny_lm(seed=0, scale=0.3, **overrides):
    cfg = dict(
        vocab_size=VOCAB, max_position_embeddings=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = GPTScratchForCausalLM(GPTScratchConfig(**cfg)).eval()
    with torch.no_grad():  # peaked, input-dependent distributions
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, scale)
    return model


class LetterTokenizer:
    """Token id i is the letter chr(65 + i % 26); id 0 is end-of-text (decoded as nothing)."""

    pad_token_id = bos_token_id = eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True, **kwargs):
        return "".join(chr(65 + i % 26) for i in ids if i != 0 or not skip_special_tokens)

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 65 for c in text]


def ids_between(low, high, *shape, seed=1):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(prompts, pad):
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):] = torch.as_tensor(p)
        attention_mask[row, width - len(p):] = 1
    return input_ids, attention_mask


def mixin_new_tokens(model, prompts, eos=None, **kwargs):
    """GenerationMixin's greedy continuation of each prompt (left-padded batch), cut before its first eos."""
    input_ids, attention_mask = left_padded(prompts, 0)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, pad_token_id=0,
                         eos_token_id=eos, **kwargs)
    rows = []
    for row in out[:, input_ids.shape[1]:].tolist():
        rows.append(row[: row.index(eos)] if eos is not None and eos in row else row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# greedy decoding equals GenerationMixin's
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_single_prompt_equals_generation_mixin(seed):
    model = tiny_lm(seed)
    prompt = ids_between(1, VOCAB, 6, seed=seed).tolist()
    (request,) = Engine(model, LetterTokenizer(), eos_ids=()).run([Request(prompt, max_new_tokens=40)])
    assert request.tokens == mixin_new_tokens(model, [prompt], max_new_tokens=40)[0]
    assert request.finish_reason == "length" and len(request.tokens) == 40


def test_greedy_left_padded_batch_equals_generation_mixin_and_each_prompt_alone():
    model = tiny_lm()
    prompts = [ids_between(1, VOCAB, n, seed=n).tolist() for n in (3, 9, 5)]
    engine = Engine(model, LetterTokenizer(), eos_ids=())
    batch = engine.run([Request(p, max_new_tokens=30) for p in prompts])
    expected = mixin_new_tokens(model, prompts, max_new_tokens=30)
    assert [r.tokens for r in batch] == expected
    for p, r in zip(prompts, batch):
        assert engine.run([Request(p, max_new_tokens=30)])[0].tokens == r.tokens


def test_rows_stop_at_their_own_end_and_leave_the_batch():
    model = tiny_lm()
    prompts = [ids_between(1, VOCAB, n, seed=10 + n).tolist() for n in (4, 7, 6)]
    free = mixin_new_tokens(model, prompts, max_new_tokens=25)
    eos = free[0][3]  # a token one row produces early, others later or never: rows finish at different steps
    engine = Engine(model, LetterTokenizer(), eos_ids=[eos])
    lengths = [25, 10, 25]
    got = engine.run([Request(p, max_new_tokens=n) for p, n in zip(prompts, lengths)])
    expected = mixin_new_tokens(model, prompts, eos=eos, max_new_tokens=25)
    assert got[0].tokens == expected[0] and got[0].finish_reason == "stop" and len(got[0].tokens) == 3
    assert got[1].tokens == expected[1][:10]  # its own budget
    assert got[1].finish_reason == ("length" if eos not in free[1][:10] else "stop")
    assert got[2].tokens == expected[2]


def test_prompt_that_does_not_fit_is_refused_and_request_fits_it():
    model = tiny_lm()
    engine = Engine(model, LetterTokenizer())
    with pytest.raises(ValueError, match="does not leave room"):
        engine.run([Request(list(range(1, 97)))])
    request = engine.request(list(range(1, 95)) * 2, max_new_tokens=40)
    assert len(request.prompt_ids) + request.max_new_tokens <= 96 and request.truncated > 0
    assert request.prompt_ids[-1] == 94  # the newest tokens are kept
    assert engine.request("", max_new_tokens=5).prompt_ids == [0]  # an empty prompt starts after end-of-text


# ---------------------------------------------------------------------------------------------------------------
# text: streaming, stop strings
# ---------------------------------------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_text_and_stop_strings_end_each_row():
    model = tiny_lm()
    tokenizer = LetterTokenizer()
    engine = Engine(model, tokenizer, eos_ids=())
    prompts = [ids_between(1, VOCAB, n, seed=20 + n).tolist() for n in (4, 6)]
    free = engine.run([Request(p, max_new_tokens=20) for p in prompts])
    full = [tokenizer.decode(r.tokens) for r in free]
    stop = full[0][5:7]  # a stop string that row 0 reaches after 5 characters
    streamed = {0: [], 1: []}
    requests = [Request(p, max_new_tokens=20, stop=[stop]) for p in prompts]
    engine.run(requests, on_text=lambda r, piece: streamed[requests.index(r)].append(piece))
    assert requests[0].text == full[0][: full[0].index(stop)] and requests[0].finish_reason == "stop"
    cut = full[1].find(stop)
    assert requests[1].text == (full[1] if cut < 0 else full[1][:cut])
    for index, request in enumerate(requests):
        assert "".join(streamed[index]) == request.text
        assert all(stop not in piece for piece in streamed[index])


def test_text_helpers_keep_characters_whole_and_hide_stop_strings():
    from transformers import AutoTokenizer  # noqa: F401  (the real tokenizers are tested in test_serve_judge_chat)

    state = {}
    assert "".join(cut_at_stop_strings(iter(["Sure", ", hi", "\nUs", "er: x"]), ["\nUser:"], state)) == "Sure, hi"
    assert state["stop"] == "\nUser:"

    class Bytes:
        def decode(self, ids, **kwargs):
            return bytes(ids).decode("utf-8", errors="replace")

    data = "né 😀!".encode()
    pieces = list(decode_incrementally(Bytes(), list(data)))
    assert "".join(pieces) == "né 😀!" and all("\ufffd" not in p for p in pieces)


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_per_request_seed():
    model = tiny_lm()
    engine = Engine(model, LetterTokenizer(), eos_ids=())
    prompt = ids_between(1, VOCAB, 4).tolist()
    settings = dict(max_new_tokens=20, temperature=1.5, top_k=20, top_p=0.9)
    first, second, other = engine.run([Request(prompt, seed=s, **settings) for s in (123, 123, 124)])
    assert first.tokens == second.tokens != other.tokens
    assert engine.run([Request(prompt, seed=123, **settings)])[0].tokens == first.tokens  # alone as in a batch


def test_top_k_1_equals_greedy():
    model = tiny_lm()
    engine = Engine(model, LetterTokenizer(), eos_ids=())
    prompt = ids_between(1, VOCAB, 5).tolist()
    greedy = engine.run([Request(prompt, max_new_tokens=20)])[0].tokens
    assert engine.run([Request(prompt, max_new_tokens=20, temperature=0.7, top_k=1, seed=0)])[0].tokens == greedy


def step_logits(model, prompt, tokens):
    """Logits that chose each generated token, from one full forward pass (an oracle independent of the cache)."""
    sequence = torch.tensor([prompt + tokens])
    with torch.no_grad():
        return model(sequence, use_cache=False).logits[0, len(prompt) - 1 : -1]


def test_sampled_tokens_respect_top_k_and_top_p():
    model = tiny_lm(scale=0.05)  # flat distributions: without the cut, tokens outside it would be drawn
    engine = Engine(model, LetterTokenizer(), eos_ids=())
    prompt = ids_between(1, VOCAB, 5).tolist()
    request = engine.run([Request(prompt, max_new_tokens=30, temperature=1.0, top_k=3, seed=1)])[0]
    allowed = step_logits(model, prompt, request.tokens).topk(3, dim=-1).indices
    assert (allowed == torch.tensor(request.tokens)[:, None]).any(-1).all()

    top_p, temperature = 0.3, 0.8
    request = engine.run([Request(prompt, max_new_tokens=30, temperature=temperature, top_p=top_p, seed=2)])[0]
    probs = torch.softmax(step_logits(model, prompt, request.tokens) / temperature, dim=-1)
    chosen = probs.gather(-1, torch.tensor(request.tokens)[:, None]).squeeze(-1)
    mass_above = (probs * (probs > chosen[:, None])).sum(-1)  # in the nucleus: likelier tokens hold < top_p
    assert (mass_above < top_p + 1e-5).all()
    assert len(set(request.tokens)) > 3  # and it did sample, not just take the argmax


def test_sample_next_token_has_the_support_of_the_generation_mixin_warpers():
    """Same support as transformers' Temperature -> TopK -> TopP warpers, on random logits."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 200, generator=torch.Generator().manual_seed(3)) * 2
    for temperature, top_k, top_p in [(1.0, 10, 1.0), (0.7, 0, 0.8), (1.3, 25, 0.5), (1.0, 1, 1.0)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone()) if temperature != 1.0 else logits.clone()
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        support = torch.isfinite(scores)
        generator = torch.Generator().manual_seed(0)
        drawn = torch.stack([sample_next_token(logits, temperature, top_k, top_p, generator) for _ in range(300)], 1)
        hit = torch.zeros_like(support)
        hit.scatter_(1, drawn, True)
        assert (hit <= support).all(), (temperature, top_k, top_p)  # nothing outside the support
        small = support.sum(1) <= 5
        assert (hit[small] == support[small]).all()  # and every token of a small support gets drawn
    assert torch.equal(sample_next_token(logits, 0.0), logits.argmax(-1))


# ---------------------------------------------------------------------------------------------------------------
# the buffer
# ---------------------------------------------------------------------------------------------------------------


def test_kv_buffer_gives_the_logits_of_dynamic_cache():
    model = tiny_lm()
    input_ids, attention_mask = left_padded([ids_between(1, VOCAB, 5, seed=12), ids_between(1, VOCAB, 8, seed=13)], 0)
    steps = ids_between(1, VOCAB, 2, 6, seed=14)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    results = []
    with torch.no_grad():
        for cache in (DynamicCache(config=model.config), KVBuffer(model.config.num_hidden_layers, 8 + 6)):
            width = 8
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            real = attention_mask.bool()
            mask = ((causal[None] & real[:, None]) | torch.eye(width, dtype=torch.bool))[:, None]
            logits = [model(input_ids, attention_mask=mask, position_ids=position_ids,
                            **{CACHE_ARGUMENT: cache}).logits]
            pos = position_ids[:, -1:]
            for s in range(steps.shape[1]):
                real = torch.cat([real, torch.ones(2, 1, dtype=torch.bool)], 1)
                pos = pos + 1
                logits.append(model(steps[:, s : s + 1], attention_mask=real[:, None, None], position_ids=pos,
                                    **{CACHE_ARGUMENT: cache}).logits)
            results.append(logits)
            assert cache.get_seq_length() == 14
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kv_buffer_refuses_to_overflow_and_keeps_rows():
    cache = KVBuffer(1, 4)
    keys = torch.arange(3 * 2 * 3 * 8, dtype=torch.float).view(3, 2, 3, 8)
    cache.update(keys, keys, 0)
    cache.keep_rows(torch.tensor([2, 0]))
    assert torch.equal(cache.keys[0][:, :, :3], keys[[2, 0]])
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(torch.zeros(2, 2, 2, 8), torch.zeros(2, 2, 2, 8), 0)


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on():
    model = tiny_lm()
    engine = Engine(model, LetterTokenizer(), eos_ids=())
    prompts = [ids_between(1, VOCAB, n, seed=30 + n).tolist() for n in (3, 5)]
    alone = engine.run([Request(prompts[1], max_new_tokens=15)])[0].tokens
    requests = [Request(p, max_new_tokens=15) for p in prompts]

    def cancel_first(request, piece):
        if request is requests[0] and len(request.tokens) == 4:
            request.cancelled = True

    engine.run(requests, on_text=cancel_first)
    assert requests[0].finish_reason == "cancelled" and len(requests[0].tokens) == 4
    assert requests[1].tokens == alone and requests[1].finish_reason == "length"


def test_sampler_edge_settings_fall_back_to_the_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    for settings in (dict(temperature=1e-30), dict(temperature=1.0, top_p=0.0), dict(temperature=0.5, top_k=1)):
        assert torch.equal(sample_next_token(logits, **settings), logits.argmax(-1)), settings
