"""longvila.model: the compact LongVILA VLM (vision tower + projector + Hugging Face causal LM).

Importing this package registers ``model_type = "longvila"`` with ``AutoConfig`` and
``AutoModelForCausalLM``.
"""

from .config import LongVILAConfig, paper_config, tiny_config
from .processing import LongVILAProcessor
from .projector import build_projector
from .tokenizer import load_tokenizer
from .vision import build_vision_tower
from .vlm import LongVILAForCausalLM, causal_lm_loss, register_auto_classes

register_auto_classes()

__all__ = [
    "LongVILAConfig",
    "LongVILAForCausalLM",
    "LongVILAProcessor",
    "build_projector",
    "build_vision_tower",
    "causal_lm_loss",
    "load_tokenizer",
    "paper_config",
    "tiny_config",
]
