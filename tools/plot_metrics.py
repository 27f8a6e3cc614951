"""A run's curves in one PNG: ``python tools/plot_metrics.py RUN_DIR [--out PNG]``.

Reads ``RUN_DIR/metrics.jsonl`` (train.output_dir) and draws, against the iteration, the loss
(and each eval set's loss, where the file holds eval records), tokens/s, MFU, the grad norm and
the skipped samples; a panel whose data the file lacks is left out. ``--out``: default
``RUN_DIR/metrics.png``.

Eval records are taken in any of these forms: ``{"eval": {"loss": ...}}``, ``{"eval": {SET:
{"loss": ...}}}``, ``{"eval/loss": ...}``, ``{"eval/SET/loss": ...}``, or ``{"eval": SET, "loss":
...}``. A line cut short (a crash while writing) is passed over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megaomni.training.dashboards import flatten  # noqa: E402

# Panel title -> the flattened fields it draws (a field of one name, or eval losses).
PANELS = {"loss": ("loss",), "tokens/s": ("tokens_per_s",), "MFU": ("mfu",), "grad norm": ("grad_norm",),
          "skipped samples": ("skipped_samples",)}
COLUMNS, PANEL_INCHES, DPI = 2, (6.0, 3.5), 100


def read_records(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "iteration" in record:
                records.append(record)
    return records


def _values(record: dict) -> dict[str, float]:
    """The record's numeric fields, flattened; an eval record's under ``eval/``."""
    if isinstance(record.get("eval"), str):  # {"eval": SET, "loss": ...}
        rest = {k: v for k, v in record.items() if k != "eval"}
        record = {"iteration": record["iteration"], "eval": {record["eval"]: rest}}
    return flatten(record)


def _is_eval_loss(name: str) -> bool:
    return name.startswith("eval/") and name.rsplit("/", 1)[-1] == "loss"


def panels(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """Panel title -> line label -> (iterations, values): the panels with data, in order."""
    drawn: dict[str, dict[str, tuple[list, list]]] = {title: {} for title in PANELS}
    for record in records:
        for name, value in _values(record).items():
            title = "loss" if _is_eval_loss(name) else next((t for t, f in PANELS.items() if name in f), None)
            if title is not None:
                xs, ys = drawn[title].setdefault(name, ([], []))
                xs.append(record["iteration"])
                ys.append(value)
    return {title: lines for title, lines in drawn.items() if lines}


def plot(drawn: dict[str, dict[str, tuple[list, list]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(drawn) // COLUMNS))
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(PANEL_INCHES[0] * COLUMNS, PANEL_INCHES[1] * rows), dpi=DPI,
                             squeeze=False)
    for ax, (title, lines) in zip(axes.flat, drawn.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if len(lines) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)  # not bbox_inches="tight": the image keeps its stated size
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the run's train.output_dir (holding metrics.jsonl)")
    parser.add_argument("--out", help="the PNG to write (default RUN_DIR/metrics.png)")
    args = parser.parse_args(argv)
    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    drawn = panels(read_records(path))
    if not drawn:
        print(f"{path}: no metrics to draw", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "metrics.png")
    plot(drawn, out)
    print(f"wrote {out} ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
