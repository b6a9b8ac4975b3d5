"""Where the study reads and writes: the results file, the report and the files kept beside it, in this repository.

Other modules read these as `paths.NAME` when they run, so a test can point them at a temporary directory. Importing
this module puts the repository first on `sys.path`: `yolo_advamd` imports from a clone without an install.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "results.jsonl"
REPORT = ROOT / "docs" / "RESULTS.md"
PLOT = ROOT / "docs" / "results" / "benign_vs_adv.png"
BENCH = ROOT / "docs" / "results" / "benchmarks.txt"  # the last --bench output, kept in every report
RECOMMENDED = ROOT / "hyps" / "recommended.yaml"  # written from the study's records by `recommend`
DISCUSSION = ROOT / "docs" / "results" / "discussion.md"  # hand-written reading of the numbers, kept in every report
TARGETS = ROOT / "docs" / "results" / "targets"  # each profile's M_T, kept in the repository: a fresh machine resumes
