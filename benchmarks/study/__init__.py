"""The study behind `benchmarks/reproduce.py`, its command line: the paper's comparisons and the arms of "where does
adversarial training lift benign mAP?", resumable, and the report they make.

- `paths`: where the results file, the report and the kept M_Ts live.
- `arms`: the protocol as data: the schedule, the profiles, the study's arms and the other tasks.
- `records`: the results file: each finished run is one JSON line, the last line of a run wins.
- `plans`: which runs a profile or the study makes, and the rules (screen, capacity arm) that choose them.
- `runner`: training, evaluation and the loops that run the planned runs not yet recorded.
- `recommend`: the lift rule and the configuration recommended from the records.
- `report`: docs/RESULTS.md and its plot from the records.
"""
