"""The README's example runs (reduced to one epoch) and L-SR1 lowers the training loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs() -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.run("L-SR1 (trust region)", epochs=2, batch=250, seed=0)
    assert len(rows) == 2
    assert rows[1][1] < rows[0][1] < 2.3  # loss falls below the chance level log(10) and keeps falling
    assert "accepted=" in rows[1][3]
