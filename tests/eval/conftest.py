"""Fixtures for the eval tests: one tiny random-init checkpoint saved once per session."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config

    path = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config()
    torch.manual_seed(0)
    LongVILAForCausalLM(cfg).save_pretrained(path)
    LongVILAProcessor.from_config(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_ckpt):
    from longvila.eval import runner

    return runner.load_model(tiny_ckpt)


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    # result files of test runs never land in leaderboards/results
    monkeypatch.setenv("LONGVILA_RESULTS_DIR", str(tmp_path / "results"))


@pytest.fixture(scope="session")
def letter_ckpt(tmp_path_factory):
    """A checkpoint rigged to answer "B" to every prompt, so benchmark accuracies are known in advance.

    With tied embeddings, logits = final_norm(h) @ E^T. Every token embedding gets a large first
    coordinate (the residual stream keeps it positive), the final norm keeps only that coordinate, and
    "B" has the largest value there: the argmax is "B" whatever the context.
    """
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config

    path = tmp_path_factory.mktemp("letter_ckpt")
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LongVILAForCausalLM(cfg)
    proc = LongVILAProcessor.from_config(cfg)
    (b_id,) = proc.tokenizer.encode("B", add_special_tokens=False)
    llm = model.language_model
    with torch.no_grad():
        emb = llm.get_input_embeddings().weight
        emb[:, 0] = 1000.0
        emb[b_id, 0] = 2000.0
        llm.model.norm.weight.zero_()
        llm.model.norm.weight[0] = 1.0
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """save_tiny(arch) once per session: the folder of a tiny random-init Hugging Face model of ``arch``."""
    from longvila.eval.tiny_hf import save_tiny

    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = save_tiny(arch, tmp_path_factory.mktemp(arch))
        return made[arch]

    return get
