"""hf_lrnn: H-LRU and BD-LRU structured linear RNNs as a transformers architecture.

Importing the package registers ``model_type="lrnn"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM``, ``AutoModelForSequenceClassification`` and ``AutoModelForTokenClassification``,
and marks the classes so that ``save_pretrained`` also writes the modeling code and ``auto_map`` (for
``trust_remote_code=True`` loading where hf_lrnn is not installed).
"""
from transformers import (
    AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
)

from . import ops
from .cache_lrnn import LRNNCache
from .configuration_lrnn import LRNNConfig, swiglu_intermediate_size
from .generation_lrnn import check_token_ids
from .heads_lrnn import LRNNForSequenceClassification, LRNNForTokenClassification
from .modeling_lrnn import LRNNForCausalLM, LRNNModel, LRNNPreTrainedModel

__version__ = "0.1.0"
__all__ = [
    "LRNNConfig", "LRNNCache", "LRNNModel", "LRNNForCausalLM", "LRNNForSequenceClassification",
    "LRNNForTokenClassification", "LRNNPreTrainedModel", "ops",
    "check_token_ids", "swiglu_intermediate_size",
]

AutoConfig.register(LRNNConfig.model_type, LRNNConfig, exist_ok=True)
AutoModel.register(LRNNConfig, LRNNModel, exist_ok=True)
AutoModelForCausalLM.register(LRNNConfig, LRNNForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(LRNNConfig, LRNNForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(LRNNConfig, LRNNForTokenClassification, exist_ok=True)
LRNNConfig.register_for_auto_class()
LRNNModel.register_for_auto_class("AutoModel")
LRNNForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LRNNForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LRNNForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
