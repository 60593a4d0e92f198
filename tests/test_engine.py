"""The fast paths against the slow ones they replace.

``GPTScratchForCausalLM.generate`` runs greedy decoding and plain sampling in a lean loop of its own (a preallocated
``KVBuffer``, masks and positions computed once), and every projection of a decoding step goes through
``project_few_rows``.  The oracle throughout is ``GenerationMixin.generate`` called on the same model -- the path
every other model takes -- and a plain forward pass.  Tiny configs, so the suite stays fast.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache
from transformers.generation.streamers import BaseStreamer

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from modeling_gpt_scratch import modeling_gpt_scratch as mg

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


def ids_between(low, high, *shape, seed=1):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(prompts, pad):
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):] = p
        attention_mask[row, width - len(p):] = 1
    return input_ids, attention_mask


def mixin_generate(model, *args, **kwargs):
    """The reference: GenerationMixin's own generate on our model (bypassing the override), on the kernels
    ``model.generate`` uses -- a batch inside ``packed_for_decoding``, as there.  That the packed kernels compute the
    plain projections is tested on its own below."""
    prompt = args[0] if args else kwargs.get("input_ids")
    with mg.packed_for_decoding(model, prompt.shape[0]):
        return GenerationMixin.generate(model, *args, **kwargs)


@pytest.fixture
def lean_only(monkeypatch):
    """Make any fallback to GenerationMixin.generate fail, to prove the lean loop ran."""
    def refuse(*args, **kwargs):
        raise AssertionError("GenerationMixin.generate was called: the lean path was not taken")

    monkeypatch.setattr(GenerationMixin, "generate", refuse)


# ---------------------------------------------------------------------------------------------------------------
# greedy decoding equals GenerationMixin's
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_batch_1_equals_generation_mixin(seed):
    model = tiny_lm(seed)
    prompt = ids_between(1, VOCAB, 1, 6, seed=seed)
    kwargs = dict(max_new_tokens=40, do_sample=False)
    expected = mixin_generate(model, prompt, **kwargs)
    got = model.generate(prompt, **kwargs)
    assert torch.equal(got, expected)
    # use_cache=False: GenerationMixin's full recomputation; our override hands it over unchanged
    uncached = mixin_generate(model, prompt, use_cache=False, **kwargs)
    assert torch.equal(model.generate(prompt, use_cache=False, **kwargs), uncached)
    assert torch.equal(got, uncached)


def test_greedy_left_padded_batch_equals_generation_mixin():
    model = tiny_lm()
    pad = model.config.pad_token_id
    prompts = [ids_between(1, VOCAB, 3, seed=2), ids_between(1, VOCAB, 9, seed=3), ids_between(1, VOCAB, 5, seed=4)]
    input_ids, attention_mask = left_padded(prompts, pad)
    kwargs = dict(max_new_tokens=30, do_sample=False, pad_token_id=pad)
    expected = mixin_generate(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    got = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(got, expected)
    # and each row equals its prompt generated alone, unpadded
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], **kwargs)
        assert torch.equal(got[row, input_ids.shape[1]:], alone[0, len(p):])
    uncached = mixin_generate(model, input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    assert torch.equal(got, uncached)


def test_lean_path_runs_for_the_common_cases(lean_only):
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 2, 5)
    model.generate(prompt, max_new_tokens=5, do_sample=False)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=True, top_k=5,
                   top_p=0.9, temperature=0.7, pad_token_id=0, eos_token_id=[0, 1])
    model.generate(inputs=prompt, max_new_tokens=5, streamer=Collect())


def test_eos_stops_and_pads_finished_rows_like_generation_mixin():
    model = tiny_lm()
    prompts = [ids_between(1, VOCAB, 4, seed=5), ids_between(1, VOCAB, 7, seed=6), ids_between(1, VOCAB, 6, seed=7)]
    input_ids, attention_mask = left_padded(prompts, 0)
    free = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=25, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    new = free[:, input_ids.shape[1]:]
    # a token that one row produces early and another later (or never): rows finish at different steps
    eos = int(new[0, 3])
    kwargs = dict(max_new_tokens=25, do_sample=False, eos_token_id=eos, pad_token_id=VOCAB - 1)
    expected = mixin_generate(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    got = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(got, expected)
    assert got.shape[1] <= free.shape[1]
    assert (got[0, input_ids.shape[1] + 4:] == VOCAB - 1).all()  # row 0 stopped after its eos, then padding
    # a list of end tokens, and pad_token_id left unset (GenerationMixin pads with the first end token)
    kwargs = dict(max_new_tokens=25, do_sample=False, eos_token_id=[eos, int(new[1, 2])])
    model.generation_config.pad_token_id = None
    try:
        expected = mixin_generate(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        assert torch.equal(model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs), expected)
    finally:
        model.generation_config.pad_token_id = 0


def test_mask_inferred_from_padding_when_not_given():
    """No attention_mask, pad != eos: GenerationMixin infers the mask from the pad tokens; so do we."""
    model = tiny_lm(pad_token_id=5, eos_token_id=7)
    input_ids, _ = left_padded([ids_between(8, VOCAB, 3, seed=8), ids_between(8, VOCAB, 6, seed=9)], 5)
    kwargs = dict(max_new_tokens=15, do_sample=False)
    assert torch.equal(model.generate(input_ids, **kwargs), mixin_generate(model, input_ids, **kwargs))


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


def test_streamer_sees_what_generation_mixin_streams():
    model = tiny_lm()
    input_ids, attention_mask = left_padded([ids_between(1, VOCAB, 4, seed=10), ids_between(1, VOCAB, 6, seed=11)], 0)
    ours, theirs = Collect(), Collect()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False)
    model.generate(streamer=ours, **kwargs)
    mixin_generate(model, streamer=theirs, **kwargs)
    assert ours.ended and theirs.ended
    assert len(ours.chunks) == len(theirs.chunks) == 9
    for a, b in zip(ours.chunks, theirs.chunks):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# the near-tie guard of the fast output projection
# ---------------------------------------------------------------------------------------------------------------


def test_near_tied_head_rows_give_generation_mixins_tokens():
    """Two output-head rows one rounding step apart: logits tie to the last bits at every step."""
    model = tiny_lm(tie_word_embeddings=False)
    prompt = ids_between(1, VOCAB, 1, 5)
    first = model.generate(prompt, max_new_tokens=20, do_sample=False)[0, 5:]
    with torch.no_grad():
        for token in first.unique():
            twin = (int(token) + 1) % VOCAB
            model.lm_head.weight[twin] = torch.nextafter(model.lm_head.weight[token], torch.tensor(float("inf")))
    kwargs = dict(max_new_tokens=20, do_sample=False)
    assert torch.equal(model.generate(prompt, **kwargs), mixin_generate(model, prompt, **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 2, 4)
    kwargs = dict(max_new_tokens=20, do_sample=True, top_k=20, top_p=0.9, temperature=1.5, eos_token_id=None)
    torch.manual_seed(123)
    first = model.generate(prompt, **kwargs)
    torch.manual_seed(123)
    second = model.generate(prompt, **kwargs)
    torch.manual_seed(124)
    other = model.generate(prompt, **kwargs)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_top_k_1_equals_greedy():
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 2, 5)
    greedy = model.generate(prompt, max_new_tokens=20, do_sample=False)
    torch.manual_seed(0)
    assert torch.equal(model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=1, temperature=0.7), greedy)


def step_logits(model, sequences, prompt_len):
    """Logits that chose each generated token, from full forward passes (an oracle independent of the cache)."""
    with torch.no_grad():
        return model(sequences, use_cache=False).logits[:, prompt_len - 1 : -1]


def test_sampled_tokens_respect_top_k():
    model = tiny_lm(scale=0.05)  # flat distributions: without the cut, tokens outside the top 3 would be drawn
    prompt = ids_between(1, VOCAB, 4, 5)
    torch.manual_seed(1)
    out = model.generate(prompt, max_new_tokens=30, do_sample=True, top_k=3, eos_token_id=None)
    logits = step_logits(model, out, 5)
    allowed = logits.topk(3, dim=-1).indices
    assert (allowed == out[:, 5:, None]).any(-1).all()


def test_sampled_tokens_respect_top_p():
    model = tiny_lm(scale=0.05)
    prompt = ids_between(1, VOCAB, 4, 5)
    torch.manual_seed(2)
    top_p, temperature = 0.3, 0.8
    out = model.generate(prompt, max_new_tokens=30, do_sample=True, top_k=0, top_p=top_p, temperature=temperature,
                         eos_token_id=None)
    probs = torch.softmax(step_logits(model, out, 5) / temperature, dim=-1)
    chosen = probs.gather(-1, out[:, 5:, None]).squeeze(-1)
    # a token is in the nucleus when the tokens more likely than it hold less than top_p of the mass
    mass_above = (probs * (probs > chosen[..., None])).sum(-1)
    assert (mass_above < top_p + 1e-5).all()
    assert len(out[:, 5:].unique()) > 3  # and it did sample, not just take the argmax


def test_sample_next_token_matches_the_generation_mixin_warpers():
    """Same support as Temperature -> TopK -> TopP warpers of transformers, on random logits."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 200, generator=torch.Generator().manual_seed(3)) * 2
    for temperature, top_k, top_p in [(1.0, 10, 1.0), (0.7, 0, 0.8), (1.3, 25, 0.5), (1.0, 1, 1.0)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone()) if temperature != 1.0 else logits.clone()
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        support = torch.isfinite(scores)
        torch.manual_seed(0)
        drawn = torch.stack([mg.sample_next_token(logits, temperature, top_k, top_p) for _ in range(300)], 1)
        hit = torch.zeros_like(support)
        hit.scatter_(1, drawn, True)
        assert (hit <= support).all(), (temperature, top_k, top_p)  # nothing outside the support
        small = support.sum(1) <= 5
        assert (hit[small] == support[small]).all()  # and every token of a small support gets drawn


# ---------------------------------------------------------------------------------------------------------------
# what the lean loop hands to GenerationMixin
# ---------------------------------------------------------------------------------------------------------------


def test_other_features_fall_back_to_generation_mixin():
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 1, 5)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (1, 11) and len(out.scores) == 6
    for extra in (dict(num_beams=3), dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2),
                  dict(min_new_tokens=4, eos_token_id=3)):
        kwargs = dict(max_new_tokens=8, do_sample=False, **extra)
        assert torch.equal(model.generate(prompt, **kwargs), mixin_generate(model, prompt, **kwargs)), extra
    # no max_new_tokens: GenerationMixin's default length rules
    assert torch.equal(model.generate(prompt, do_sample=False), mixin_generate(model, prompt, do_sample=False))


def test_errors_come_from_generation_mixin():
    model = tiny_lm()
    with pytest.raises(ValueError):
        model.generate(ids_between(1, VOCAB, 1, 5), max_new_tokens=5, not_an_argument=3)


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------


def test_kv_buffer_gives_the_same_logits_as_dynamic_cache():
    model = tiny_lm()
    input_ids, attention_mask = left_padded([ids_between(1, VOCAB, 5, seed=12), ids_between(1, VOCAB, 8, seed=13)], 0)
    steps = ids_between(1, VOCAB, 2, 6, seed=14)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=model.config), mg.KVBuffer(model.config.num_hidden_layers, 8 + 6)]
    results = []
    with torch.no_grad():
        for cache in caches:
            mask, pos = attention_mask, position_ids
            logits = [model(input_ids, attention_mask=mask, position_ids=pos, past_key_values=cache).logits]
            for s in range(steps.shape[1]):
                mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
                pos = pos[:, -1:] + 1
                logits.append(model(steps[:, s : s + 1], attention_mask=mask, position_ids=pos,
                                    past_key_values=cache).logits)
            results.append(logits)
    assert caches[1].get_seq_length() == 14
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_kv_buffer_refuses_to_overflow():
    cache = mg.KVBuffer(1, 4)
    cache.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8), 0)


@pytest.mark.parametrize("rows", [1, 2, 9, 64, 65])
@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_project_few_rows_is_linear(rows, bias, monkeypatch):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(48, 300, bias=bias)
    x = torch.randn(rows, 1, 48)
    expected = linear(x)
    if rows <= mg.FEW_ROWS:  # the fast form must not go through F.linear at all
        def refuse(*args, **kwargs):
            raise AssertionError("F.linear was called: the few-rows path was not taken")

        monkeypatch.setattr(F, "linear", refuse)
    torch.testing.assert_close(mg.project_few_rows(linear, x), expected, atol=1e-5, rtol=1e-5)
    assert mg.project_few_rows(linear, x).is_contiguous()
    view = mg.project_few_rows(linear, x, contiguous=False)
    assert view.shape == (rows, 1, 300) and torch.equal(view, mg.project_few_rows(linear, x))
    monkeypatch.undo()
    calls = []
    linear.register_forward_hook(lambda *args: calls.append(1))
    mg.project_few_rows(linear, x)
    assert calls == [1]  # a module with hooks is called, not bypassed


def packs(model):
    return [name for name, module in model.named_modules() if mg.PACKED in module.__dict__]


@pytest.mark.parametrize("rows", [2, 8, 64])
@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_packed_projection_is_linear_and_never_stale(rows, bias, monkeypatch):
    torch.manual_seed(rows)
    model = torch.nn.Sequential(torch.nn.Linear(48, 300, bias=bias))
    linear, x = model[0], torch.randn(rows, 1, 48)
    linear.weight = torch.nn.Parameter(torch.randn(300, 48))  # version 0, like the one that replaces it below
    with mg.packed_for_decoding(model, rows):
        assert packs(model) == ["0"]
        for name in ("mm", "addmm"):  # the packed form must not go through MKL's gemm
            monkeypatch.setattr(torch, name, lambda *a, **k: pytest.fail("the packed weight was not used"))
        torch.testing.assert_close(mg.project_few_rows(linear, x), linear(x), atol=1e-5, rtol=1e-5)
        monkeypatch.undo()
        linear.weight.mul_(-2)  # changed in place: the reordered copy is stale and must not be used
        torch.testing.assert_close(mg.project_few_rows(linear, x), linear(x), atol=1e-5, rtol=1e-5)
        linear.weight = torch.nn.Parameter(torch.randn(300, 48))  # replaced: another tensor of the same version
        torch.testing.assert_close(mg.project_few_rows(linear, x), linear(x), atol=1e-5, rtol=1e-5)
        one_row = x[:1]  # a single row keeps the two-column gemm
        torch.testing.assert_close(mg.project_few_rows(linear, one_row), linear(one_row), atol=1e-5, rtol=1e-5)
    assert packs(model) == []


def test_packing_is_shared_by_nested_blocks_and_always_dropped():
    model = tiny_lm()
    linears = sorted(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    with mg.packed_for_decoding(model, 3):
        assert sorted(packs(model)) == linears
        head = model.lm_head.__dict__[mg.PACKED][0]
        with mg.packed_for_decoding(model, 5):
            assert model.lm_head.__dict__[mg.PACKED][0] is head
        assert sorted(packs(model)) == linears  # the outer block still runs
    assert packs(model) == []
    with pytest.raises(KeyError):
        with mg.packed_for_decoding(model, 3):
            raise KeyError("fails inside")
    assert packs(model) == []
    with mg.packed_for_decoding(model, 1):
        assert packs(model) == []  # one row: nothing to reorder


@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_no_packing_when_the_private_ops_fail_or_disagree(broken, monkeypatch):
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 3, 5)
    if broken == "raises":
        def reorder(*args, **kwargs):
            raise RuntimeError("no oneDNN here")

        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    else:
        product = torch.ops.mkldnn._linear_pointwise
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: product(*args) * 1.01)
    with mg.packed_for_decoding(model, 3):
        assert packs(model) == []
    got = model.generate(prompt, max_new_tokens=6, do_sample=False)  # on the plain weights, like the reference
    assert got.shape == (3, 11) and torch.equal(got, mixin_generate(model, prompt, max_new_tokens=6, do_sample=False))


@torch.no_grad()
def test_packed_forward_matches_plain_forward():
    model = tiny_lm()
    ids = ids_between(1, VOCAB, 4, 7)
    plain = model(ids).logits
    with mg.packed_for_decoding(model, 4):
        torch.testing.assert_close(model(ids).logits, plain, atol=1e-5, rtol=1e-5)
        step = model(ids[:, :1]).logits  # 4 rows: the packed kernels
    torch.testing.assert_close(step, model(ids[:, :1]).logits, atol=1e-5, rtol=1e-5)


def test_batched_generate_decodes_on_packed_weights_and_drops_them():
    model = tiny_lm()
    seen = []

    class Watch(BaseStreamer):
        def put(self, value):
            seen.append(len(packs(model)))

        def end(self):
            pass

    prompt = ids_between(1, VOCAB, 3, 5)
    model.generate(prompt, max_new_tokens=4, do_sample=False, streamer=Watch())
    assert seen and all(n == 4 * model.config.num_hidden_layers + 1 for n in seen)  # every nn.Linear
    assert packs(model) == []
    seen.clear()
    model.generate(prompt[:1], max_new_tokens=4, do_sample=False, streamer=Watch())
    assert seen == [0] * 5  # batch 1: the plain weights


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_causal_lm_loss_equals_shifted_cross_entropy(monkeypatch, chunk_rows):
    monkeypatch.setattr(mg.ChunkedCrossEntropy, "CHUNK_BYTES", chunk_rows * 40 * 4)  # rows of 40 float32 logits
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 40, requires_grad=True)
    labels = torch.randint(0, 40, (3, 11))
    labels[0, 4] = labels[2, :3] = -100
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss = mg.causal_lm_loss(logits, labels)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    g_ref, = torch.autograd.grad(reference, logits)
    g, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-6)
    # Trainer's num_items_in_batch: the sum divided by it
    summed = F.cross_entropy(logits[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1), reduction="sum") / 17
    loss = mg.causal_lm_loss(logits, labels, num_items_in_batch=17)
    torch.testing.assert_close(loss, summed)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(summed, logits)[0])
    # nothing to predict: NaN, as F.cross_entropy gives
    assert torch.isnan(mg.causal_lm_loss(logits, torch.full((3, 11), -100)))


def test_model_loss_with_labels_matches_plain_cross_entropy():
    model = tiny_lm(scale=0.05).train()
    ids = ids_between(0, VOCAB, 2, 12)
    out = model(ids, labels=ids)
    reference = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, reference, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), retain_graph=True)
    ref_grads = torch.autograd.grad(reference, list(model.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
