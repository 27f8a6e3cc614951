"""tools/plot_metrics.py: the curves of metrics.jsonl in one PNG, eval records in any form, panels
without data left out."""

from __future__ import annotations

import json

from PIL import Image

from tests.conftest import load_script

plot_metrics = load_script("tools/plot_metrics.py")


def _write(run_dir, records, tail: str = "") -> None:
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(tail)


def _train(it: int, **extra) -> dict:
    return {"iteration": it, "loss": 6.0 / it, "grad_norm": 1.0 / it, "tokens_per_s": 100.0 * it, "lr": 1e-3,
            "skipped_samples": it // 2, "skipped": {"bad image": it // 2}, **extra}


def test_every_panel_with_its_lines(tmp_path):
    records = [_train(it, mfu=0.1 * it) for it in range(1, 5)]
    records += [{"iteration": 2, "eval": {"loss": 3.5, "answer_nll": 9.0}},  # the forms a run may write
                {"iteration": 4, "eval": {"val": {"loss": 2.5}}},
                {"iteration": 4, "eval/chat/loss": 2.0},
                {"iteration": 4, "eval": "asr", "loss": 1.5}]
    _write(tmp_path, records, tail='{"iteration": 5, "lo')  # a line cut short by a crash
    assert plot_metrics.main([str(tmp_path), "--out", str(tmp_path / "curves.png")]) == 0

    drawn = plot_metrics.panels(plot_metrics.read_records(str(tmp_path / "metrics.jsonl")))
    assert drawn == {
        "loss": {"loss": ([1, 2, 3, 4], [6.0, 3.0, 2.0, 1.5]), "eval/loss": ([2], [3.5]),
                 "eval/val/loss": ([4], [2.5]), "eval/chat/loss": ([4], [2.0]), "eval/asr/loss": ([4], [1.5])},
        "tokens/s": {"tokens_per_s": ([1, 2, 3, 4], [100.0, 200.0, 300.0, 400.0])},
        "MFU": {"mfu": ([1, 2, 3, 4], [0.1, 0.2, 0.30000000000000004, 0.4])},
        "grad norm": {"grad_norm": ([1, 2, 3, 4], [1.0, 0.5, 1.0 / 3, 0.25])},
        "skipped samples": {"skipped_samples": ([1, 2, 3, 4], [0, 1, 1, 2])},
    }
    with Image.open(tmp_path / "curves.png") as image:
        image.load()  # decodes whole
        assert image.format == "PNG" and image.size == (1200, 3 * 350)  # 5 panels: 3 rows of 2, 6 x 3.5 in at 100 dpi


def test_missing_fields_leave_their_panels_out(tmp_path):
    _write(tmp_path, [{"iteration": it, "loss": 1.0 / it} for it in (1, 2)])  # no eval, MFU, grad norm, ...
    assert plot_metrics.main([str(tmp_path)]) == 0
    assert list(plot_metrics.panels(plot_metrics.read_records(str(tmp_path / "metrics.jsonl")))) == ["loss"]
    with Image.open(tmp_path / "metrics.png") as image:
        image.load()
        assert image.size == (1200, 350)


def test_nothing_to_draw_is_one_line(tmp_path, capsys):
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'metrics.jsonl'}: no such file\n"
    _write(tmp_path, [{"iteration": 1, "lr": 1e-3}])
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'metrics.jsonl'}: no metrics to draw\n"
