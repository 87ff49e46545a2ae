"""transformers' own model and generation tests (ModelTesterMixin, GenerationTesterMixin, ConfigTester) run
against LRNNModel, LRNNForCausalLM and the two classification heads, once with every layer H-LRU and once
with every layer BD-LRU.

How to run: these tests import transformers' test modules (``tests.test_modeling_common``,
``tests.generation.test_utils``, ``tests.test_configuration_common``), which are not part of the installed
package. Put a copy of transformers' ``tests/`` folder, matching the installed version, under a folder outside
this repository (e.g. /work/scratch/hf_tests/tests; it needs ``parameterized`` and ``httpx`` importable, and
transformers' ``utils/test_module`` next to ``tests/``), then run from the repository root:

    PYTHONPATH=$PWD:/work/scratch/hf_tests OMP_NUM_THREADS=1 python -m pytest -q -rs tests/transformers_suite

``-k HLRU`` or ``-k BDLRU`` runs one mixer; ``RUN_SLOW=1`` adds transformers' slow tests (torch.export).
Without transformers' test modules the whole module is skipped, with the reason shown by ``pytest -rs``.
(transformers' source distribution, ``pip download transformers==VERSION --no-binary :all: --no-deps``, holds
``tests/test_*_common.py`` but not ``tests/generation`` or ``tests/exporters``: those come from its repository.)

PipelineTesterMixin is not used: its tests run only architectures listed in transformers' tiny-model summary
(random checkpoints on the Hub), so for LRNN every one of them would skip; tests/test_heads.py runs the
pipelines on LRNN models.
"""
import contextlib
import unittest
from unittest import mock

import pytest
import torch

try:
    from tests.generation import test_utils as generation_test_utils
    from tests.generation.test_utils import GenerationTesterMixin
    from tests.test_configuration_common import ConfigTester
    from tests.test_modeling_common import ModelTesterMixin, ids_tensor
except ImportError as error:  # the default test run: transformers' test modules are not on the path
    pytest.skip(
        "transformers' own test modules (tests.test_modeling_common, tests.generation.test_utils from the "
        f"transformers repository) are not importable ({error}); see this module's docstring to run them",
        allow_module_level=True,
    )

from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

from hf_lrnn import (
    LRNNCache, LRNNConfig, LRNNForCausalLM, LRNNForSequenceClassification, LRNNForTokenClassification, LRNNModel,
)
from hf_lrnn.cache_lrnn import layer_state_shapes
from hf_lrnn.generation_lrnn import CACHE_FIELD


class LRNNModelTester:
    """Tiny LRNN configs and inputs for transformers' mixins (the attribute names are the ones they read)."""

    def __init__(self, parent, mixer: str, batch_size=4, seq_length=7, vocab_size=99, hidden_size=32,
                 num_hidden_layers=2, order=2, block_size=4, is_training=True):
        self.parent = parent
        self.mixer = mixer
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.order = order
        self.block_size = block_size
        self.is_training = is_training
        # Special ids below vocab_size - 15, the smallest vocabulary the resize tests shrink to: LRNN refuses a
        # resize that would leave a special id outside the vocabulary (the saved config could not be loaded).
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def get_config(self) -> LRNNConfig:
        return LRNNConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            mixer=self.mixer, order=self.order, block_size=self.block_size, scan_backend="torch",
            pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long, device=input_ids.device)
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(autouse=True)
def lrnn_in_transformers_model_name_tables():
    """transformers' tests tell a base model from a causal LM by its class name in the auto tables (the base
    model gets no labels and is left out of the training tests); list LRNN's there while a test runs."""
    tables = {
        "MODEL_MAPPING_NAMES": "LRNNModel",
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "LRNNForCausalLM",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "LRNNForSequenceClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "LRNNForTokenClassification",
    }
    with contextlib.ExitStack() as stack:
        for table, class_name in tables.items():
            stack.enter_context(mock.patch.dict(getattr(modeling_auto, table), {"lrnn": class_name}))
        yield


class LRNNTransformersSuiteBase(ModelTesterMixin, GenerationTesterMixin):
    """transformers' model and generation tests for one mixer (``mixer``, set by the subclasses)."""

    mixer = None
    all_model_classes = (LRNNModel, LRNNForCausalLM, LRNNForSequenceClassification, LRNNForTokenClassification)
    has_attentions = False  # a recurrent model: no attention weights, as for Mamba/Mamba2
    # transformers runs its weight-initialisation test only for models it dates to 2023 or later (by the
    # config file's copyright line, which hf_lrnn's files do not have): run it.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = LRNNModelTester(self, mixer=self.mixer)
        self.config_tester = ConfigTester(
            self, config_class=LRNNConfig, mixer=self.mixer, hidden_size=32,
            common_properties=["hidden_size", "num_hidden_layers", "vocab_size"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def _check_past_key_values_for_generate(self, batch_size, past_key_values, seq_length, config):
        """transformers' check of a generated cache, for the recurrent LRNNCache (as its docstring asks of a
        non-standard cache): one float32 (batch, N, D) state per layer, ``seq_length`` positions seen."""
        self.assertIsInstance(past_key_values, LRNNCache)
        shapes = layer_state_shapes(config)
        self.assertEqual(len(past_key_values), len(shapes))
        for state, (N, D) in zip(past_key_values.states, shapes):
            self.assertEqual(tuple(state.shape), (batch_size, N, D))
            self.assertEqual(state.dtype, torch.float32)
        self.assertEqual(past_key_values.get_seq_length(), seq_length)

    def _check_caches_are_equal(self, cache1, cache2):
        """transformers' cache comparison, for the recurrent LRNNCache (its docstring asks for an override)."""
        self.assertIsInstance(cache1, LRNNCache)
        self.assertIsInstance(cache2, LRNNCache)
        self.assertEqual(cache1.get_seq_length(), cache2.get_seq_length())
        self.assertEqual(len(cache1), len(cache2))
        for state1, state2 in zip(cache1.states, cache2.states):
            torch.testing.assert_close(state1, state2)

    def _with_lrnn_cache_as_static_cache(self, test):
        """Run one of transformers' static-cache tests, with LRNNCache standing for StaticCache in its type
        checks: ``cache_implementation="static"`` gives LRNN's fixed-size recurrent state (a compileable
        LRNNCache), not an attention StaticCache. The test's other checks run unchanged."""
        with mock.patch.object(generation_test_utils, "StaticCache", LRNNCache):
            test()

    def test_generate_with_static_cache(self):
        self._with_lrnn_cache_as_static_cache(super().test_generate_with_static_cache)

    def test_generate_from_inputs_embeds_with_static_cache(self):
        self._with_lrnn_cache_as_static_cache(super().test_generate_from_inputs_embeds_with_static_cache)

    def test_generate_continue_from_past_key_values(self):
        self._with_lrnn_cache_as_static_cache(super().test_generate_continue_from_past_key_values)

    @unittest.skip(
        reason="its cache-type checks contradict each other for LRNN: the default cache must be a DynamicCache and "
        "the static one must not, while LRNN's one LRNNCache is both (fixed-size, compileable by default); the "
        "property itself (compiled generate() equals eager, one graph for every step) is "
        "tests/test_compile.py::test_compiled_generate_gives_the_eager_greedy_tokens"
    )
    def test_generate_compile_model_forward_fullgraph(self):
        pass

    def test_left_padding_compatibility(self):
        """transformers' test, which it skips for models with ``has_attentions = False`` (taking that to mean no
        padding support); LRNN masks padded steps, so it runs here."""
        with mock.patch.object(type(self), "has_attentions", True):
            super().test_left_padding_compatibility()

    def test_recurrent_layers_mask_padding_on_continued_forward(self):
        """transformers' test, which runs only for configs whose ``layer_types`` name a recurrent layer; every
        LRNN layer is recurrent (``layer_types`` is not an LRNNConfig field), so it runs here with them named."""
        prepare = self.model_tester.prepare_config_and_inputs_for_common

        def prepare_with_layer_types():
            config, inputs = prepare()
            config.layer_types = ["linear_attention"] * config.num_hidden_layers
            return config, inputs

        with mock.patch.object(self.model_tester, "prepare_config_and_inputs_for_common", prepare_with_layer_types):
            super().test_recurrent_layers_mask_padding_on_continued_forward()

    def test_cached_forward_matches_whole_sequence(self):
        """The hidden states of a forward over T tokens equal those of T-1 tokens then 1 with the cache."""
        config, input_ids, attention_mask = self.model_tester.prepare_config_and_inputs()
        model = LRNNModel(config).to(torch_device).eval()
        with torch.no_grad():
            whole = model(input_ids, attention_mask=attention_mask).last_hidden_state
            first = model(input_ids[:, :-1], attention_mask=attention_mask[:, :-1], use_cache=True)
            cache = getattr(first, CACHE_FIELD)
            self.assertIsInstance(cache, LRNNCache)
            last = model(input_ids[:, -1:], attention_mask=attention_mask, use_cache=True, **{CACHE_FIELD: cache})
        torch.testing.assert_close(torch.cat([first.last_hidden_state, last.last_hidden_state], 1), whole)


class LRNNHLRUTransformersSuiteTest(LRNNTransformersSuiteBase, unittest.TestCase):
    mixer = "hlru"


class LRNNBDLRUTransformersSuiteTest(LRNNTransformersSuiteBase, unittest.TestCase):
    mixer = "bdlru"
