"""``GenerationMixin`` on our model, the features transformers' own generation tests exercise (that suite is not in
transformers' sdist, so ``tests/model/test_hf_common.py`` cannot run it in CI): dict outputs with attentions, hidden states
and scores for greedy, sampling and beam search; assisted and prompt-lookup decoding equal plain greedy decoding."""

import pytest
import torch

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM

LAYERS, HEADS = 2, 4


def tiny(seed):
    torch.manual_seed(seed)
    cfg = GPTScratchConfig(vocab_size=99, max_position_embeddings=64, hidden_size=32, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPTScratchForCausalLM(cfg).eval()


@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(do_sample=True, top_k=5), dict(num_beams=3)])
def test_dict_outputs_carry_attentions_hidden_states_and_scores(mode):
    model = tiny(0)
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, return_dict_in_generate=True,
                         output_attentions=True, output_hidden_states=True, output_scores=True, **mode)
    rows = 2 * mode.get("num_beams", 1)
    assert out.sequences.shape == (2, 12) and len(out.scores) == 5
    assert len(out.attentions) == 5 and all(len(step) == LAYERS for step in out.attentions)
    assert out.attentions[0][0].shape == (rows, HEADS, 7, 7)  # the prompt: every query over every prompt key
    assert out.attentions[-1][0].shape == (rows, HEADS, 1, 11)  # a decoding step: one query over the cache
    assert len(out.hidden_states[0]) == LAYERS + 1 and out.hidden_states[0][0].shape == (rows, 7, 32)
    weights = out.attentions[0][0]
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
    assert (weights[-1, :, 0, 1:] == 0).all()  # causal: in the unpadded row the first query sees only itself
    assert (weights[0, :, 2:, :2] == 0).all()  # and in the left-padded row no real token sees the padding


def test_assisted_and_prompt_lookup_decoding_equal_greedy():
    model, assistant = tiny(0), tiny(1)
    ids = torch.randint(3, 99, (1, 7), generator=torch.Generator().manual_seed(2))
    greedy = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, assistant_model=assistant),
                       greedy)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, prompt_lookup_num_tokens=3),
                       greedy)
