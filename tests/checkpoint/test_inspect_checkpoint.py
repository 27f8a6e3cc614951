"""tools/inspect_checkpoint.py on the tiny checkpoint root ``saved`` (tests/checkpoint/conftest.py):
the parameters it counts from the index are the model's, per part; a damaged piece is exit 2 and
one line naming the file."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.checkpoint.conftest import NEWEST, OLDER
from tests.checkpoint.test_check import _distcp, _truncate
from tests.conftest import load_script

inspect_checkpoint = load_script("tools/inspect_checkpoint.py")


def _model_counts() -> dict[str, int]:
    """The tiny model's parameters (numel, shared ones once), by the names' prefixes."""
    from tests.training.steps import small_state

    _, state = small_state()
    named = dict(state.chunks[0].named_parameters())
    prefixes = {"llm.embedding": "llm.embedding.", "llm.decoder": "llm.decoder.", "llm.output": "llm.output_layer.",
                "vision.projector": "vision_encoder.projector.", "audio.projector": "audio_encoder.projector."}
    counts = {part: sum(p.numel() for n, p in named.items() if n.startswith(prefix))
              for part, prefix in prefixes.items()}
    for group in ("vision", "audio"):
        counts[group] = sum(p.numel() for n, p in named.items() if n.startswith(f"{group}_encoder."))
        counts[f"{group}.encoder"] = counts[group] - counts[f"{group}.projector"]
    counts["llm"] = sum(p.numel() for n, p in named.items() if n.startswith("llm."))
    counts["total"] = sum(p.numel() for p in named.values())
    return counts


def test_the_report_counts_the_models_parameters(saved, capsys):
    assert inspect_checkpoint.main([saved]) == 0
    out = capsys.readouterr().out
    printed = {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^ +(\S+) +([\d,]+)$", out, re.M)}
    expected = _model_counts()
    assert printed == expected and expected["llm.output"] > 0 and expected["vision.projector"] > 0
    lines = out.splitlines()
    assert lines[0] == f"checkpoint: {os.path.join(saved, NEWEST)} (whole)"
    assert lines[1].startswith("iteration: 2 (full: model, optimizer (step 2), LR schedule")
    assert lines[2].startswith("layout: tp=1 pp=1 vpp=1 cp=1 ep=1 dp=1 (saved by 1 ranks;")


@pytest.mark.parametrize("damage", ["distcp truncated", "rng truncated"])
def test_a_damaged_piece_is_exit_2_naming_the_file(saved, tmp_path, capsys, damage):
    newest = shutil.copytree(os.path.join(saved, NEWEST), str(tmp_path / NEWEST))
    piece = _distcp(newest) if damage == "distcp truncated" else os.path.join(newest, "rng", "rank_00000.pt")
    _truncate(piece)
    assert inspect_checkpoint.main([newest]) == 2
    captured = capsys.readouterr()
    name = os.path.relpath(piece, newest)
    assert captured.out == "" and captured.err.startswith(f"{newest}: {name}: ") and captured.err.count("\n") == 1


def test_a_root_passes_over_its_damaged_newest(saved, tmp_path, capsys):
    root = shutil.copytree(saved, str(tmp_path / "root"))
    _truncate(_distcp(os.path.join(root, NEWEST)))
    assert inspect_checkpoint.main([root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"checkpoint: {os.path.join(root, OLDER)} (whole)"
    assert lines[1].startswith(f"passed over (damaged): {NEWEST}/__0_0.distcp: truncated (")
