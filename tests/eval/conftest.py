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
