"""transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``), run against gpt-scratch's classes,
plus direct checks of the contracts the common tests lean on: eager vs sdpa, static vs dynamic cache, torch.export.

The common test files are those of the *installed* transformers, fetched from its PyPI source distribution into a
git-ignored cache on first use (see ``tests/model/hf_suite.py``, which also says what is not covered: transformers'
``GenerationTesterMixin`` and ``ExportTesterMixin`` are not in the sdist and run only when their real files are put in
the cache).  Without network and cache the common tests skip; the direct tests at the bottom always run.

``GPTScratchModelTester`` plays the part of transformers' ``GPT2ModelTester``: a tiny config and random inputs.
"""

import copy
import unittest
from unittest import mock

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.models.auto import modeling_auto

from modeling_gpt_scratch import (
    GPTScratchConfig,
    GPTScratchForCausalLM,
    GPTScratchForSequenceClassification,
    GPTScratchModel,
)
from modeling_gpt_scratch.modeling_gpt_scratch import CACHE_FIELD
from tests.model import hf_suite

try:
    common, config_common, generation_common = hf_suite.load()
    SUITE_ERROR = None
except hf_suite.SuiteUnavailable as error:
    common = config_common = generation_common = None
    SUITE_ERROR = str(error)


AUTO_TABLES = {
    "MODEL_MAPPING_NAMES": GPTScratchModel,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": GPTScratchForCausalLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": GPTScratchForSequenceClassification,
}


def ids(shape, vocab_size, generator=None):
    return torch.randint(0, vocab_size, shape, generator=generator)


def cache_of(output):
    """The returned cache: ``output.cache`` from transformers 5.24, ``output.past_key_values`` before."""
    return getattr(output, CACHE_FIELD)


class GPTScratchModelTester:
    """A tiny config and random inputs for the common tests, in the shape transformers' own testers have."""

    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        use_input_mask=True,
        use_labels=True,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        max_position_embeddings=512,
        type_sequence_label_size=2,
        num_labels=3,
        initializer_range=0.02,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.max_position_embeddings = max_position_embeddings
        self.type_sequence_label_size = type_sequence_label_size
        self.num_labels = num_labels
        self.initializer_range = initializer_range
        # one id for bos, eos and padding, as GPT-2's tokenizer has (<|endoftext|>)
        self.bos_token_id = self.eos_token_id = self.pad_token_id = vocab_size - 1

    def get_config(self):
        return GPTScratchConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            num_labels=self.num_labels,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )

    def prepare_config_and_inputs(self):
        # ids below the special token, so that no row is read as padding
        input_ids = ids((self.batch_size, self.seq_length), self.vocab_size - 1)
        input_mask = None
        if self.use_input_mask:
            # left padding: ones on the right, each row keeps at least its last token
            lengths = torch.randint(1, self.seq_length + 1, (self.batch_size,))
            input_mask = (torch.arange(self.seq_length) >= self.seq_length - lengths[:, None]).long()
        sequence_labels = token_labels = None
        if self.use_labels:
            sequence_labels = ids((self.batch_size,), self.type_sequence_label_size)
            token_labels = ids((self.batch_size, self.seq_length), self.vocab_size)
        return self.get_config(), input_ids, input_mask, sequence_labels, token_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _, _ = self.prepare_config_and_inputs()
        inputs = {"input_ids": input_ids}
        if input_mask is not None:
            inputs["attention_mask"] = input_mask
        return config, inputs

    # model-specific checks, as GPT2ModelTester has them

    def create_and_check_model(self, config, input_ids, input_mask, *args):
        model = GPTScratchModel(config).eval()
        with torch.no_grad():
            out = model(input_ids, attention_mask=input_mask)
            out_no_mask = model(input_ids)
        self.parent.assertEqual(out.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(out_no_mask.last_hidden_state.shape, out.last_hidden_state.shape)
        self.parent.assertEqual(len(cache_of(out)), config.num_hidden_layers)

    def create_and_check_model_past(self, config, input_ids, *args):
        """Decoding with the cache gives the hidden states of the full sequence."""
        model = GPTScratchModel(config).eval()
        with torch.no_grad():
            first = model(input_ids, use_cache=True)
            next_tokens = ids((self.batch_size, 3), self.vocab_size)
            cached = model(next_tokens, cache=cache_of(first)).last_hidden_state
            full = model(torch.cat([input_ids, next_tokens], dim=-1)).last_hidden_state[:, -3:]
        self.parent.assertEqual(cache_of(first).get_seq_length(), self.seq_length + 3)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)

    def create_and_check_model_past_with_padding(self, config, input_ids, input_mask, *args):
        """With left padding, the cached continuation matches the full run at the real positions."""
        model = GPTScratchModel(config).eval()
        with torch.no_grad():
            position_ids = (input_mask.cumsum(-1) - 1).clamp(min=0)
            first = model(input_ids, attention_mask=input_mask, position_ids=position_ids, use_cache=True)
            next_tokens = ids((self.batch_size, 1), self.vocab_size)
            mask = torch.cat([input_mask, torch.ones_like(next_tokens)], dim=-1)
            cached = model(
                next_tokens, attention_mask=mask, position_ids=position_ids[:, -1:] + 1, cache=cache_of(first)
            )
            full = model(
                torch.cat([input_ids, next_tokens], dim=-1),
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            )
        torch.testing.assert_close(
            cached.last_hidden_state[:, -1], full.last_hidden_state[:, -1], atol=1e-5, rtol=1e-4
        )

    def create_and_check_lm_head(self, config, input_ids, input_mask, sequence_labels, token_labels):
        model = GPTScratchForCausalLM(config).eval()
        out = model(input_ids, attention_mask=input_mask, labels=token_labels)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        self.parent.assertEqual(out.loss.shape, ())
        out.loss.backward()
        self.parent.assertIsNotNone(model.transformer.tok_emb.weight.grad)

    def create_and_check_sequence_classification(self, config, input_ids, input_mask, sequence_labels, token_labels):
        config = copy.deepcopy(config)
        config.num_labels = self.num_labels
        model = GPTScratchForSequenceClassification(config).eval()
        labels = ids((self.batch_size,), self.num_labels)
        out = model(input_ids, attention_mask=input_mask, labels=labels)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(out.loss))


if common is not None:

    class GPTScratchModelTest(common.ModelTesterMixin, generation_common.GenerationTesterMixin, unittest.TestCase):
        """transformers' ModelTesterMixin (and its GenerationTesterMixin, where the real one is cached)."""

        all_model_classes = (GPTScratchModel, GPTScratchForCausalLM, GPTScratchForSequenceClassification)
        test_resize_embeddings = True
        test_missing_keys = True
        test_mismatched_shapes = True
        test_torch_exportable = True
        has_attentions = True
        is_encoder_decoder = False
        # _init_weights must cover every weight; the common test otherwise exempts models from before 2023
        test_can_init_all_missing_weights_before_2023 = True

        @classmethod
        def setUpClass(cls):
            # The common tests pick inputs and labels by looking class names up in transformers' tables of built-in
            # models (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, ...); AutoModel*.register does not reach those tables, so list
            # our classes there while this class runs, as a built-in model is listed.
            cls._mapping_patches = [
                mock.patch.dict(getattr(modeling_auto, table), {GPTScratchConfig.model_type: model_class.__name__})
                for table, model_class in AUTO_TABLES.items()
            ]
            for patch in cls._mapping_patches:
                patch.start()

        @classmethod
        def tearDownClass(cls):
            for patch in cls._mapping_patches:
                patch.stop()

        def setUp(self):
            torch.manual_seed(0)  # the tester's random inputs, the same on every run
            self.model_tester = GPTScratchModelTester(self)
            self.config_tester = config_common.ConfigTester(
                self, config_class=GPTScratchConfig, hidden_size=48, num_attention_heads=4
            )

        def test_config(self):
            self.config_tester.run_common_tests()

        @unittest.skipUnless(
            hf_suite.real_generation_tests(),
            "transformers' GenerationTesterMixin is not in its sdist: an empty stand-in is mixed in, so transformers' "
            "generate tests are NOT run (see tests/model/hf_suite.py to add them)",
        )
        def test_transformers_generation_tests_are_mixed_in(self):
            self.assertTrue(any(name.startswith("test_") for name in vars(generation_common.GenerationTesterMixin)))

        @unittest.skipUnless(
            hf_suite.real_export_tests(),
            "transformers' ExportTesterMixin is not in its sdist: an empty stand-in is mixed in, so transformers' "
            "torch.export tests are NOT run (test_torch_export_with_dynamic_batch_and_sequence below stands in)",
        )
        def test_transformers_export_tests_are_mixed_in(self):
            self.assertTrue(any(name.startswith("test_") for name in vars(common.ExportTesterMixin)))

        def test_model(self):
            self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

        def test_model_past(self):
            self.model_tester.create_and_check_model_past(*self.model_tester.prepare_config_and_inputs())

        def test_model_past_with_padding(self):
            self.model_tester.create_and_check_model_past_with_padding(*self.model_tester.prepare_config_and_inputs())

        def test_lm_head(self):
            self.model_tester.create_and_check_lm_head(*self.model_tester.prepare_config_and_inputs())

        def test_sequence_classification(self):
            self.model_tester.create_and_check_sequence_classification(*self.model_tester.prepare_config_and_inputs())

else:

    def test_transformers_common_suite():
        pytest.skip(f"transformers' common model tests not run: {SUITE_ERROR}")


# Direct checks, independent of transformers' test files: each builds its own tiny model.


def tiny_lm(attn_implementation="sdpa", seed=0, **overrides):
    """A 2-layer causal LM whose weights are spread wider than at init, so that greedy paths have no near-ties."""
    settings = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    config = GPTScratchConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    model = GPTScratchForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.3)
    return model


def same_weights(model, attn_implementation):
    config = copy.deepcopy(model.config)  # _from_config sets the implementation on the config it is given
    twin = GPTScratchForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def batch(generator_seed=0, rows=3, length=9, pad=(0, 4, 0)):
    """Token ids and a 2-D mask; row i is left-padded by pad[i] positions (ids >= 1: 0 is the pad id)."""
    generator = torch.Generator().manual_seed(generator_seed)
    input_ids = ids((rows, length), 98, generator) + 1
    attention_mask = torch.ones_like(input_ids)
    for row, count in enumerate(pad[:rows]):
        attention_mask[row, :count] = 0
        input_ids[row, :count] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "left-padded"])
def test_eager_matches_sdpa_and_returns_attention_weights(padded):
    sdpa = tiny_lm("sdpa")
    eager = same_weights(sdpa, "eager")
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    input_ids, attention_mask = batch()
    mask = attention_mask if padded else None
    real = attention_mask.bool() if padded else torch.ones_like(input_ids, dtype=torch.bool)
    with torch.no_grad():
        out_sdpa = sdpa(input_ids, attention_mask=mask)
        out_eager = eager(input_ids, attention_mask=mask, output_attentions=True)
        # sdpa has no weights to return: asked for them, it computes that step eagerly, with the same causal mask
        out_sdpa_weights = sdpa(input_ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(out_eager.logits[real], out_sdpa.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_sdpa_weights.logits[real], out_sdpa.logits[real], atol=1e-5, rtol=0)
    rows, length = input_ids.shape
    assert len(out_eager.attentions) == 2
    for weights, weights_via_sdpa in zip(out_eager.attentions, out_sdpa_weights.attentions):
        assert weights.shape == (rows, 4, length, length)
        torch.testing.assert_close(weights_via_sdpa, weights, atol=1e-6, rtol=0)
        # causal: no real query attends to a later key, and its weights sum to one
        real_queries = real[:, None, :, None].expand_as(weights)
        assert torch.all(weights.triu(diagonal=1)[real_queries] == 0)
        torch.testing.assert_close(
            weights.sum(-1)[real_queries[..., 0]], torch.ones(int(real.sum()) * 4), atol=1e-5, rtol=0
        )
        if padded:  # real queries give no weight to padding keys
            assert torch.all(weights[1, :, 4:, :4] == 0)


def test_set_attn_implementation_switches_the_product():
    model = tiny_lm("sdpa")
    input_ids, attention_mask = batch()
    with torch.no_grad():
        reference = model(input_ids, attention_mask=attention_mask)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        switched = model(input_ids, attention_mask=attention_mask, output_attentions=True)
    assert switched.attentions[0] is not None
    real = attention_mask.bool()
    torch.testing.assert_close(switched.logits[real], reference.logits[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_4d_masks_bool_and_additive_match_the_2d_mask(attn_implementation):
    model = tiny_lm(attn_implementation)
    input_ids, attention_mask = batch()
    length = input_ids.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & attention_mask.bool()[:, None, None, :]
    allowed |= torch.eye(length, dtype=torch.bool)  # padding queries see themselves, so no row is empty
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    real = attention_mask.bool()
    with torch.no_grad():
        reference = model(input_ids, attention_mask=attention_mask).logits
        for mask in (allowed, additive):
            torch.testing.assert_close(
                model(input_ids, attention_mask=mask).logits[real], reference[real], atol=1e-5, rtol=0
            )
        # and the 4-D mask is used, not replaced: opening the padding changes the padded row
        opened = model(
            input_ids, attention_mask=torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        ).logits
    assert not torch.allclose(opened[1][real[1]], reference[1][real[1]], atol=1e-3)


def greedy_without_cache(model, input_ids, attention_mask, new_tokens):
    """The oracle: re-run the whole sequence for each token, no cache at all."""
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(input_ids, attention_mask=attention_mask, use_cache=False).logits[:, -1]
        input_ids = torch.cat([input_ids, logits.argmax(-1, keepdim=True)], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
    return input_ids


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_static_cache_generate_equals_dynamic_cache_generate(attn_implementation):
    model = tiny_lm(attn_implementation, eos_token_id=None)  # no early stop: every row gets all 10 tokens
    input_ids, attention_mask = batch(rows=2, length=6, pad=(2, 0))
    settings = dict(attention_mask=attention_mask, max_new_tokens=10, do_sample=False, return_dict_in_generate=True)
    dynamic = model.generate(input_ids, **settings)
    static = model.generate(input_ids, cache_implementation="static", **settings)
    assert isinstance(cache_of(dynamic), DynamicCache) and isinstance(cache_of(static), StaticCache)
    assert dynamic.sequences.shape == (2, 16)
    assert torch.equal(static.sequences, dynamic.sequences)
    # and both are what re-running the whole sequence gives (the unpadded row: no position-id convention involved)
    assert torch.equal(dynamic.sequences[1], greedy_without_cache(model, input_ids[1:], attention_mask[1:], 10)[0])


def test_custom_attention_function_is_used():
    """_supports_attention_backend: a function registered with transformers' AttentionInterface is what runs."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    calls = []

    def counting_sdpa(module, *args, **kwargs):
        calls.append(module.layer_idx)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("gpt_scratch_test_counting_sdpa", counting_sdpa)
    AttentionMaskInterface.register("gpt_scratch_test_counting_sdpa", sdpa_mask)  # the mask it expects
    reference = tiny_lm("sdpa")
    custom = same_weights(reference, "gpt_scratch_test_counting_sdpa")
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        got = custom(input_ids, attention_mask=attention_mask).logits
    assert calls == [0, 1]
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-6, rtol=0)


def test_torch_export_with_dynamic_batch_and_sequence():
    model = tiny_lm("sdpa")
    input_ids, attention_mask = batch(rows=2, length=9, pad=(3, 0))
    batch_dim = torch.export.Dim("batch", min=1, max=8)
    seq_dim = torch.export.Dim("seq", min=2, max=32)
    program = torch.export.export(
        model,
        args=(),
        kwargs={"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False},
        dynamic_shapes={
            "input_ids": {0: batch_dim, 1: seq_dim},
            "attention_mask": {0: batch_dim, 1: seq_dim},
            "use_cache": None,
        },
    )
    exported = program.module()
    for rows, length in [(3, 5), (1, 17)]:
        new_ids, new_mask = batch(generator_seed=rows, rows=rows, length=length, pad=(2, 0, 1))
        with torch.no_grad():
            expected = model(input_ids=new_ids, attention_mask=new_mask, use_cache=False).logits
            got = exported(input_ids=new_ids, attention_mask=new_mask, use_cache=False).logits
        assert got.shape == (rows, length, 99)
        real = new_mask.bool()
        torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
