"""Fixtures of the model tests: one seeded tiny model and the processor, built once per module."""

import pytest
import torch

from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return LongVILAForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def processor():
    return LongVILAProcessor.from_config(tiny_config())
