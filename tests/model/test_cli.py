"""`longvila model` commands: info on named configs and checkpoints, clear errors."""

from longvila.model import LongVILAForCausalLM, tiny_config
from longvila.model.cli import info, main


def test_info_named_and_saved(tmp_path, capsys):
    tiny = info("tiny")
    assert tiny["tokens_per_frame"] == 1 and tiny["visual_tokens_for_6000_frames"] == 6000
    model = LongVILAForCausalLM(tiny_config())
    assert tiny["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info("paper")["tokens_per_frame"] == 196
    model.config.save_pretrained(tmp_path)
    assert info(str(tmp_path))["parameters"] == tiny["parameters"]
    assert main(["info", "tiny"]) == 0
    assert "tokens_per_frame                 1" in capsys.readouterr().out


def test_info_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "neither a named config" in capsys.readouterr().err
