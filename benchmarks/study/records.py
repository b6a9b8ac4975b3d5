"""The results file, docs/results/results.jsonl: one JSON line per finished run, the last line of a run wins.

A record names its `profile` (or arm) and `key`, its method `name`, `seed`, training settings and time, its weights
(relative to the repository) and its scores by map: `map` (benign and white-box), and for study runs `transfer`,
`leak` (attacked through M_T) and `corruption`.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

from . import paths


def load() -> list[dict]:
    """Return the recorded runs, the last record of each (profile, key): a run evaluated at more budgets is recorded
    again."""
    lines = paths.RESULTS.read_text().splitlines() if paths.RESULTS.exists() else []
    return list({((e := json.loads(line))["profile"], e["key"]): e for line in lines if line.strip()}.values())


def record(entry: dict) -> None:
    """Append one finished run to the results file, with the commit of the code that made it."""
    cmd = ["git", "-C", str(paths.ROOT), "rev-parse", "--short", "HEAD"]
    git = subprocess.run(cmd, capture_output=True, text=True)
    paths.RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.RESULTS, "a") as f:
        f.write(json.dumps({**entry, "commit": git.stdout.strip() or None}) + "\n")


def stored(weights: Path) -> str:
    """The path recorded for `weights`: relative to the repository when inside it, so a clone elsewhere finds it."""
    return str(weights.relative_to(paths.ROOT)) if weights.is_relative_to(paths.ROOT) else str(weights)


def on_disk(recorded: str) -> Path:
    """The file a recorded path names on this machine: relative to the repository, or an absolute path written by
    an older version on another machine, found again under this repository's `runs/` or `docs/` when it moved."""
    path = Path(recorded)
    if not path.is_absolute():
        return paths.ROOT / path
    for top in ("runs", "docs"):
        if not path.exists() and top in path.parts:
            return paths.ROOT.joinpath(*path.parts[path.parts.index(top) :])
    return path


def archive(profile_name: str) -> Path | None:
    """Move a profile's records (and its kept M_T) to docs/results/archive/, so the profile runs anew; return where."""
    lines = paths.RESULTS.read_text().splitlines() if paths.RESULTS.exists() else []
    old = [line for line in lines if line.strip() and json.loads(line)["profile"] == profile_name]
    if not old:
        return None
    folder = paths.RESULTS.parent / "archive"
    folder.mkdir(parents=True, exist_ok=True)
    dest = next(d for n in itertools.count(1) if not (d := folder / f"{profile_name}-{n}.jsonl").exists())
    dest.write_text("\n".join(old) + "\n")  # written before the results file drops them: nothing is lost
    if (target := paths.TARGETS / f"{profile_name}.pt").is_file():
        shutil.move(target, dest.with_suffix(".pt"))
    kept = paths.RESULTS.with_suffix(".tmp")
    kept.write_text("".join(f"{line}\n" for line in lines if line.strip() and line not in old))
    kept.replace(paths.RESULTS)
    return dest


def control(entries: list[dict], e: dict) -> dict | None:
    """The vanilla run of the same seed as `e`."""
    return next((c for c in entries if c["name"] == "vanilla" and c["seed"] == e["seed"]), None)
