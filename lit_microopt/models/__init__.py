"""LightningModules for language models: ``CausalLM`` and ``SequenceClassifier``, with the optimizer from YAML.

They are Hugging Face models: this package needs the ``[hf]`` extra.
"""

from lit_microopt._extras import require_extra

require_extra("hf", "transformers")

from lit_microopt.models.causal_lm import CausalLM
from lit_microopt.models.optimization import build_optimizer
from lit_microopt.models.schedules import WarmupDecayLR
from lit_microopt.models.sequence_classifier import SequenceClassifier

__all__ = ["CausalLM", "SequenceClassifier", "WarmupDecayLR", "build_optimizer"]
