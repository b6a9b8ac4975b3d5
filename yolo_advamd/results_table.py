"""The results table of adversarial validation, laid out like the paper's Table 1: one column per attack × ε after the
benign one (then the corrupted sets, mPC and rPC), one row per model and baseline, and the Δ row; written as
`results.csv`, `results.json` and `results.md`.

Examples:
    >>> markdown = write_table(results, save_dir)  # results: validate_advamd's output without `markdown`
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from yolo_advamd.corruptions import grid, mpc_note
from yolo_advamd.plotting import plot_corruptions
from yolo_advamd.tasks import TASKS
from yolo_advamd.validators import REJECTED

BENIGN = "benign"


def score_keys(task: str) -> dict:
    """Return the table's metrics of a task (`Task.scores`) and the rejection rate of a defense: name -> stats key."""
    return {**TASKS[task].scores, "rejected by the defense": REJECTED}


def column_name(attack: str, eps: float) -> str:
    """Return the table column of an attack and budget, e.g. `fgsm eps=0.01`."""
    return f"{attack} eps={eps:g}"


def delta(rows: list[dict]) -> dict | None:
    """Return model − baseline for every column and statistic, or None without a baseline."""
    if len(rows) < 2:
        return None
    model, base = rows
    return {
        column: {k: v - base["stats"][column][k] for k, v in stats.items() if k in base["stats"][column]}
        for column, stats in model["stats"].items()
    }


def table_rows(results: dict, metric: str, columns: list[str] | None = None) -> list[list[str]]:
    """Return one metric's table (header first) over `columns` (all when None): rows for the model, the baseline
    and Δ, values in percent."""
    key, nan = score_keys(results.get("task", "detect"))[metric], float("nan")
    columns = columns or results["columns"]
    header = ["model", "attacked model", *columns]
    lines = [header]
    for row in results["rows"]:
        values = (f"{100 * row['stats'][c].get(key, nan):.2f}" for c in columns)
        lines.append([row_label(row), row["attacked_by"], *values])
    if results["delta"]:
        diff = results["delta"]
        lines.append([delta_label(results), "", *(f"{100 * diff[c].get(key, nan):+.2f}" for c in columns)])
    return lines


def row_label(row: dict) -> str:
    """Return a results row's name in the tables: the model's, or `baseline: <name>`."""
    return row["name"] if row["role"] == "model" else f"baseline: {row['name']}"


def delta_label(results: dict) -> str:
    """Return the name of the Δ row: `Δ (<model> − <baseline>)`."""
    model, base = (r["name"] for r in results["rows"])
    return f"Δ ({model} − {base})"


def write_table(results: dict, save_dir: str | Path) -> str:
    """Write the results as `results.csv`, `results.json` and `results.md` in `save_dir`; return the Markdown.

    The tables follow the paper's Table 1: one column per attack × ε after the benign one, one row per model (and
    baseline) naming the model the attacks were computed on, and the Δ row (model − baseline). Values in % for the
    task (`Task.scores`): detection mAP50-95 and mAP50 (and with `save_json` the pycocotools AP50-95 and AP50),
    segmentation mask and box mAP, classification top-1 and top-5 accuracy; with a defense, the share of images it
    rejected (a bare row shows nan). With corruptions the tables end with
    mPC and rPC, and the task's score (the first metric) follows per corruption × severity, also drawn in
    `corruptions.png`. The CSV holds the same tables with a `metric` column and every corrupted set's column; the
    JSON holds every statistic of every run as fractions.

    Args:
        results (dict): The output of `validate_advamd` (without `markdown`).
        save_dir (str | Path): The run directory.

    Returns:
        (str): The Markdown tables.
    """
    save_dir = Path(save_dir)
    first = results["rows"][0]["stats"][BENIGN]
    metrics = [m for m, key in score_keys(results.get("task", "detect")).items() if key in first]
    blocks, records = [], []
    sets = results.get("corruptions", {}).get("columns") or []
    for metric in metrics:
        lines = table_rows(results, metric, [c for c in results["columns"] if c not in sets])
        blocks.append(f"**{metric} (%)**\n\n" + markdown_table(lines))
        records += [[metric, *line] for line in table_rows(results, metric)[1:]]
    with open(save_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["metric", *table_rows(results, metrics[0])[0]], *records])
    if sets:
        blocks += corruption_blocks(results, metrics[0], save_dir / "corruptions.png")
    (save_dir / "results.json").write_text(
        json.dumps({k: v for k, v in results.items() if k != "markdown"}, indent=2, default=str)
    )
    markdown = "\n\n".join(blocks) + "\n"
    (save_dir / "results.md").write_text(markdown, encoding="utf-8")
    return markdown


def markdown_table(lines: list[list[str]]) -> str:
    """Return rows (header first) as a Markdown table."""
    md = ["| " + " | ".join(line) + " |" for line in lines]
    md.insert(1, "|" + "---|" * len(lines[0]))
    return "\n".join(md)


def corruption_blocks(results: dict, metric: str, plot_file: Path) -> list[str]:
    """Return the Markdown tables of the task's score per corruption × severity (per model, and Δ with a baseline)
    and draw them as heatmaps into `plot_file`."""
    key, c = TASKS[results["task"]].scores[metric], results["corruptions"]
    names, severities = c["names"], c["severities"]
    grids = {row_label(row): grid(row["stats"], names, severities, key) for row in results["rows"]}
    if results["delta"]:
        grids[delta_label(results)] = grid(results["delta"], names, severities, key)
    blocks = [mpc_note(names, severities)]
    for title, values in grids.items():
        sign = "+" if title.startswith("Δ") else ""
        lines = [["corruption", *(f"s{s}" for s in severities), "mean"]]
        lines += [[n, *(f"{100 * v:{sign}.2f}" for v in (*r, r.mean()))] for n, r in zip(names, values)]
        blocks.append(f"**{metric} (%) per corruption × severity: {title}**\n\n" + markdown_table(lines))
    plot_corruptions(grids, names, severities, f"{metric} (%)", plot_file)
    return blocks
