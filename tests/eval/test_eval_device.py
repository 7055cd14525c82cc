"""The evaluations' tensors on the model's device, checked without a GPU.

FakeTensorMode with fake CUDA tensors (the pinned torch is a CUDA build) traces the forward passes of the
evaluation path with the model moved to "cuda" and raises FakeTensorDeviceMismatchError wherever a tensor
made on the CPU meets a CUDA one: our model's frame encoding, text embedding, teacher forcing (from embeddings made
on the device), and a Hugging Face adapter's processor inputs moved to the model (its forward reads placeholder
counts and M-RoPE indices on the host, which fake tensors lack). Fake tensors hold no
data, so only placement is checked here (the key/value cache of the shared-prefix paths asks for a real CUDA
context, so those are not traced); the numbers are checked on the CPU by the other tests.
"""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from longvila.eval import adapters, runner


@pytest.fixture
def fake():
    return FakeTensorMode(allow_non_fake_inputs=True)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.eval_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert runner.eval_device() == torch.device("cuda", 3)


def test_our_model_scores_on_cuda(tiny_ckpt, fake):
    lm = runner.load_model(tiny_ckpt, device="cpu")
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    with fake, torch.no_grad():
        lm.model.to("cuda")
        assert runner.device_of(lm.model).type == "cuda"
        vis = runner.encode_frames(lm, frames)  # leaves on the CPU (cached as safetensors)
        assert vis.device.type == "cpu"
        # (merge_visual_tokens counts placeholders on the host, data a fake tensor lacks: embeddings made here)
        d = lm.model.config.text_config.hidden_size
        emb = torch.zeros(2, 20, d, device="cuda")
        pred = runner.teacher_forced_argmax(lm, emb, 3)
        assert pred.shape == (2, 3) and pred.device.type == "cpu"
        text = runner.embed(lm, torch.tensor([[5, 6, 7]]), None)
        assert text.device.type == "cuda"


def test_hf_adapter_inputs_on_cuda(tiny_hf, fake):
    lm = adapters.HFVideoLM(tiny_hf("qwen2_vl"), "qwen2_vl", device="cpu")
    raw = lm._inputs("Q?", np.zeros((4, 32, 32, 3), np.uint8), [5, 6])  # the processor runs on the host
    with fake, torch.no_grad():
        lm.model.to("cuda")
        lm.device = torch.device("cuda")
        inputs = lm.to_device(raw)
        assert inputs["input_ids"].device.type == "cuda" and inputs["pixel_values_videos"].device.type == "cuda"
        assert inputs["input_ids"].dtype == torch.long and inputs["pixel_values_videos"].dtype == lm.model.dtype
        assert all(v.device.type == "cuda" for v in inputs.values() if isinstance(v, torch.Tensor))
