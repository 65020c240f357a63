"""Checkpoints are only ever loaded with weights_only=True, and that refuses a pickle carrying code."""
from __future__ import annotations

import re
from pathlib import Path

import pickle
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


class _Evil:
    """Unpickling this would create a marker file (stands for arbitrary code)."""
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_only_refuses_code_carrying_pickle(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(str(marker))}, ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(ckpt, weights_only=True)
    assert not marker.exists()
    # A plain state_dict loads fine the same way.
    good = tmp_path / "good.pt"
    torch.save(torch.nn.Linear(2, 1).state_dict(), good)
    assert set(torch.load(good, weights_only=True)) == {"weight", "bias"}


def test_every_torch_load_in_the_code_uses_weights_only():
    offenders = []
    for path in list((REPO / "common").rglob("*.py")) + list((REPO / "experiments").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # the call up to its matching parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start(): end + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert not offenders, offenders
