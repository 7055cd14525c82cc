"""Golden outputs of the tiny model on fixed random inputs (seeded init), and the command that writes them.

Regenerate (only after an intended change of the model's numerics), from the repository root:
    .venv/bin/python tests/model/golden_model.py
"""

import json
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden_tiny.json")


def golden_outputs() -> dict:
    """Small slices of the tiny model's outputs: visual tokens, logits and the loss."""
    from longvila.model import LongVILAForCausalLM, tiny_config

    torch.manual_seed(0)
    model = LongVILAForCausalLM(tiny_config()).eval()
    gen = torch.Generator().manual_seed(1234)
    pixel_values = torch.randn(3, 3, 32, 32, generator=gen)
    ids = torch.tensor([[1, 633, 203, 3, 3, 3, 203, 352, 398, 2, 203, 1, 638, 203, 273, 24, 2]])
    labels = torch.full_like(ids, -100)
    labels[0, 14:] = ids[0, 14:]
    with torch.no_grad():
        visual = model.encode_frames(pixel_values)
        out = model(input_ids=ids, pixel_values=pixel_values, labels=labels)
    return {
        "visual[:, 0, :8]": visual[:, 0, :8].tolist(),
        "logits[0, ::4, :8]": out.logits[0, ::4, :8].tolist(),
        "logits[0, -1, -8:]": out.logits[0, -1, -8:].tolist(),
        "loss": out.loss.item(),
    }


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(golden_outputs(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
