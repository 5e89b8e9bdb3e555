#!/usr/bin/env python3
"""Plots the loss and accuracy curves of scanline runs from their metrics.jsonl files.

  tools/plot.py RUN_DIR [RUN_DIR ...] [--out PNG_PREFIX] [--bpb]

Writes <prefix>loss.png (training loss as a line, eval loss as dashed markers, one colour per run,
log y axis) and <prefix>accuracy.png (eval accuracy in percent). The prefix defaults to RUN_DIR/
for a single run and ./ for several; a prefix such as plots/brown- gives plots/brown-loss.png.
A RUN_DIR may also be the metrics.jsonl file itself. --bpb divides the losses (mean cross-entropy
per token, in nats) by ln 2, which is bits per byte for the byte-level datasets.

Needs Debian's python3-matplotlib (optional for scanline; `apt-get install python3-matplotlib`).
Exit codes: 0 written, 2 a usage error, a missing or unreadable file, no records, or no matplotlib.
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_common import finite, import_pyplot  # noqa: E402 (after the path it is found on)


def fail(message):
    print(f"plot.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def warn(message):
    print(f"plot.py: warning: {message}", file=sys.stderr)


def read_run(path):
    """Returns (train, evals): train maps step -> loss, evals maps step -> (eval_loss, eval_accuracy);
    a later record for the same step replaces an earlier one (a re-evaluated finished run)."""
    metrics = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.exists(metrics):
        if os.path.exists(path):
            fail(f"'{path}' has no metrics.jsonl (is it a scanline run folder?)")
        fail(f"'{path}' does not exist")
    try:
        with open(metrics, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read '{metrics}': {e}")
    train, evals = {}, {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            # A run killed mid-write can leave a cut last line; anything else is worth a word too.
            warn(f"{metrics}:{number}: skipped, not JSON ({e})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            warn(f"{metrics}:{number}: skipped, not a record with an integer \"step\"")
            continue
        step = record["step"]
        if "loss" in record:
            train[step] = record["loss"] if finite(record["loss"]) else math.nan
        if "eval_loss" in record or "eval_accuracy" in record:
            loss, accuracy = record.get("eval_loss"), record.get("eval_accuracy")
            evals[step] = (loss if finite(loss) else math.nan, accuracy if finite(accuracy) else math.nan)
    if not train and not evals:
        fail(f"'{metrics}' holds no training or eval records")
    return metrics, train, evals


def labels_for(paths):
    """Short run names: the folder's name, or the whole path where two runs share a name."""
    names = []
    for p in paths:
        p = os.path.normpath(p)
        if os.path.basename(p) == "metrics.jsonl":
            p = os.path.dirname(p) or "."
        names.append(os.path.basename(os.path.abspath(p)))
    return [n if names.count(n) == 1 else os.path.normpath(p) for n, p in zip(names, paths)]


def main():
    parser = argparse.ArgumentParser(
        prog="tools/plot.py",
        description="Plot loss and accuracy curves of scanline runs (their metrics.jsonl).",
        epilog="Writes PREFIXloss.png and PREFIXaccuracy.png. Exit code 2 on any error.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder (or its metrics.jsonl)")
    parser.add_argument("--out", metavar="PNG_PREFIX",
                        help="output prefix: RUN_DIR/ for one run, ./ for several")
    parser.add_argument("--bpb", action="store_true", help="plot losses in bits per byte (loss / ln 2)")
    args = parser.parse_args()  # exits with 2 on a usage error

    runs = [read_run(p) for p in args.runs]
    plt = import_pyplot(fail)

    if args.out is not None:
        prefix = args.out
    elif len(args.runs) == 1:
        only = args.runs[0]
        prefix = os.path.join(only if os.path.isdir(only) else (os.path.dirname(only) or "."), "")
    else:
        prefix = "./"
    folder = os.path.dirname(prefix)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            fail(f"cannot create '{folder}': {e}")

    scale = 1 / math.log(2) if args.bpb else 1.0
    unit = "bits per byte" if args.bpb else "nats per token"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = labels_for(args.runs)

    fig_loss, ax_loss = plt.subplots(figsize=(9, 5.5))
    fig_acc, ax_acc = plt.subplots(figsize=(9, 5.5))
    any_eval = False
    for i, ((metrics, train, evals), label) in enumerate(zip(runs, labels)):
        colour = colours[i % len(colours)]
        if train:
            steps = sorted(train)
            ax_loss.plot(steps, [train[s] * scale for s in steps], color=colour, linewidth=1.0, alpha=0.8,
                         label=f"{label} train")
        if evals:
            any_eval = True
            steps = sorted(evals)
            ax_loss.plot(steps, [evals[s][0] * scale for s in steps], color=colour, linestyle="--",
                         marker="o", markersize=4, linewidth=1.5, label=f"{label} eval")
            ax_acc.plot(steps, [evals[s][1] * 100 for s in steps], color=colour, marker="o", markersize=4,
                        linewidth=1.5, label=label)

    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"loss ({unit})")
    ax_loss.set_title("loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(fontsize="small")

    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("eval accuracy (%)")
    ax_acc.set_title("eval accuracy")
    ax_acc.grid(True, alpha=0.3)
    if any_eval:
        ax_acc.legend(fontsize="small")
    else:
        warn("no eval records: accuracy.png is empty")
        ax_acc.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=ax_acc.transAxes)

    written = []
    for fig, name in ((fig_loss, "loss.png"), (fig_acc, "accuracy.png")):
        path = prefix + name
        fig.tight_layout()
        try:
            fig.savefig(path, dpi=120)
        except OSError as e:
            fail(f"cannot write '{path}': {e}")
        plt.close(fig)
        written.append(path)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
