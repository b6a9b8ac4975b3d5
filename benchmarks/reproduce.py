"""Does AdvAmd work? The paper's comparisons (Tables 1 and 3) on the embedded digits-det data, resumable.

    python benchmarks/reproduce.py --quick          # (a) vanilla, (b) Adv-Train, (c) AdvAmd at FGSM eps=0.01, then a
                                                    # segmentation and a classification row (vanilla vs AdvAmd)
    nohup python benchmarks/reproduce.py &          # the full protocol (hours): runs append to
                                                    # docs/results/results.jsonl, finished runs are skipped, so it
                                                    # resumes where it stopped
    python benchmarks/reproduce.py --report         # only regenerate docs/RESULTS.md and the plot from the results file
    python benchmarks/reproduce.py --bench          # also run the step-cost and attack-speed benchmarks: one command
                                                    # refreshes every number in docs/RESULTS.md
    python benchmarks/reproduce.py --quick --vary beta3=0.5 abar_norm=none   # (c) AdvAmd with other settings, as a
                                                    # row of its own against the same control ("what we tried")
    python benchmarks/reproduce.py --quick --seeds 0 1 2                     # (a), (b), (c) over three seeds
    nohup python benchmarks/reproduce.py --study &  # where does adversarial training lift benign mAP? six arms, hours
    python benchmarks/reproduce.py --rerun vanilla  # also train again the recorded controls whose weights are gone
                                                    # (MagNet defends them; `--study ARM --rerun vanilla` for an arm)
    python benchmarks/reproduce.py --quick --fresh  # run a profile anew (a fresh clone has no quick M_T): its
                                                    # records move to docs/results/archive/, out of the report

Protocol: train a target M_T (yolov8n, 160 px) from scratch, fine-tune it with every method for the same epochs
under one fixed schedule (AdamW, fixed lr0, no warmup, no mosaic, no gradient accumulation, same seed), then measure
benign and white-box adversarial mAP50-95 on val with `validate_advamd`. Every run is one JSON line; a run evaluated
at a budget added later is recorded again with the new columns (the last line of a run wins).

This file is the command line; the protocol, its runner and the report are the package benchmarks/study/.
"""

from __future__ import annotations

import argparse

import yaml
from study import paths
from study.arms import ARMS, STUDY, TASKS
from study.records import archive
from study.report import report
from study.runner import benchmarks, run_protocol, run_study


def main() -> None:
    """Parse the command line, run what it asks for, then write and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="(a), (b), (c) at FGSM eps=0.01 only")
    parser.add_argument("--report", action="store_true", help="only regenerate the report from the results file")
    parser.add_argument("--bench", action="store_true", help="also run benchmarks/ into the report")
    parser.add_argument("--vary", nargs="+", metavar="KEY=VALUE", help="train (c) AdvAmd with these settings only")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of (a), (b), (c) instead of the profile's")
    parser.add_argument("--fresh", action="store_true", help="archive the profile's records and run it anew")
    parser.add_argument(
        "--study",
        nargs="*",
        metavar="ARM",
        choices=[*ARMS, "capacity"],
        help=f"run the study's arms ({', '.join(STUDY)}, then capacity; all when none is named) or the "
        f"task rows of --quick alone ({', '.join(TASKS)})",
    )
    parser.add_argument(
        "--rerun",
        nargs="+",
        default=(),
        metavar="METHOD",
        help="train again the recorded runs of these methods whose weights are gone (e.g. vanilla: MagNet defends it)",
    )
    opt = parser.parse_args()
    if opt.study is not None and not opt.report:
        try:
            run_study(opt.study, tuple(opt.rerun))
        except (ValueError, FileNotFoundError) as e:
            parser.exit(2, f"reproduce.py: error: {e}\n")
    elif not opt.report:
        vary = {}
        for arg in opt.vary or []:
            k, eq, v = arg.partition("=")
            if not eq:
                parser.error(f"--vary {arg}: give KEY=VALUE, e.g. --vary beta3=0.5")
            vary[k] = yaml.safe_load(v)
        from yolo_advamd.cfg import resolve_advamd_cfg

        try:
            resolve_advamd_cfg(vary)  # a bad key or value fails now, not after M_T
            if opt.fresh and (dest := archive("quick" if opt.quick else "full")):
                print(f"reproduce.py: the earlier records are in {dest}")
            run_protocol("quick" if opt.quick else "full", vary, opt.seeds, tuple(opt.rerun))
            if opt.quick and not vary:
                run_study(["quick-seg", "quick-cls"])  # the segmentation and classification rows
        except (SyntaxError, ValueError, FileNotFoundError) as e:
            parser.exit(2, f"reproduce.py: error: {e}\n")
    if opt.bench:
        paths.BENCH.write_text(benchmarks())
    print(report())


if __name__ == "__main__":
    main()
