#!/usr/bin/env python3
"""Plots accuracy against length from `scanline eval --json` files, one line per file.

  tools/plot_eval.py EVAL.json [EVAL.json ...] [--out PNG] [--metric exact_match|token_accuracy|both]
                     [--title TEXT]

Each file is labelled by its "name" (the run folder's, or `scanline eval --name`). The x axis is
the task's length (log scale: sequence length, string length or phonebook entries, as
`scanline eval --help` defines it), the y axis accuracy in percent. --metric both draws exact match
as solid lines and token accuracy dashed in the same colour. --out defaults to eval.png.

Needs Debian's python3-matplotlib (optional for scanline; `apt-get install python3-matplotlib`).
Exit codes: 0 written, 2 a usage error, a missing or malformed file, or no matplotlib.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_common import finite, import_pyplot  # noqa: E402 (after the path it is found on)


def fail(message):
    print(f"plot_eval.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_eval(path):
    """Returns (name, task, points): points are (length, exact_match, token_accuracy) by length."""
    if not os.path.exists(path):
        fail(f"'{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"cannot read '{path}' as JSON: {e}")
    if not isinstance(record, dict) or not isinstance(record.get("lengths"), list) or not record["lengths"]:
        fail(f"'{path}' is not a scanline eval file (no \"lengths\" list)")
    points = []
    for i, row in enumerate(record["lengths"]):
        if not isinstance(row, dict) or not all(finite(row.get(k)) for k in ("length", "exact_match", "token_accuracy")):
            fail(f"'{path}': lengths[{i}] needs numeric length, exact_match and token_accuracy")
        points.append((row["length"], row["exact_match"], row["token_accuracy"]))
    points.sort()
    name = record.get("name") or os.path.splitext(os.path.basename(path))[0]
    return str(name), str(record.get("task", "")), points


def main():
    parser = argparse.ArgumentParser(description="accuracy vs length from scanline eval --json files")
    parser.add_argument("files", nargs="+", metavar="EVAL.json")
    parser.add_argument("--out", default="eval.png", help="the PNG to write (default eval.png)")
    parser.add_argument("--metric", default="exact_match", choices=["exact_match", "token_accuracy", "both"])
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    evals = [read_eval(p) for p in args.files]
    plt = import_pyplot(fail)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    metrics = ["exact_match", "token_accuracy"] if args.metric == "both" else [args.metric]
    for n, (name, _, points) in enumerate(evals):
        colour = f"C{n % 10}"
        xs = [p[0] for p in points]
        for metric in metrics:
            ys = [100 * (p[1] if metric == "exact_match" else p[2]) for p in points]
            label = name if len(metrics) == 1 else f"{name} ({metric.replace('_', ' ')})"
            ax.plot(xs, ys, marker="o", color=colour, linestyle="-" if metric == "exact_match" else "--", label=label)
    ax.set_xscale("log")
    # Tick every length evaluated, written plainly (256, not 2.56x10^2).
    lengths = sorted({p[0] for _, _, points in evals for p in points})
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(x) for x in lengths])
    ax.minorticks_off()
    tasks = sorted({task for _, task, _ in evals if task})
    ax.set_xlabel("length" + (f" ({', '.join(tasks)})" if tasks else ""))
    ylabel = {"exact_match": "answer exact match (%)", "token_accuracy": "token accuracy (%)",
              "both": "accuracy (%)"}[args.metric]
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if args.title:
        ax.set_title(args.title)
    fig.tight_layout()
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
