"""Benign and adversarial validation: mAP (or accuracy) per attack × ε laid out like the paper's Table 1.

`validate_advamd` checks every setting and model before any work, then scores each model (and the baseline) with the
task's attack-aware Ultralytics validator (`validators.VALIDATORS`): on the benign val set, once per attack × ε, and
with `corruptions=` on the val set under common corruptions (`yolo_advamd.corruptions`: the COCO-C protocol, cached
corrupted copies of the split read through the validator's `images`, and the benchmark's mPC and rPC). The results
are written as tables (`results_table`); detection can add COCO scores (`coco_scoring`, pycocotools).

Models are always evaluated, and attacked, through the main BN (the paper's footnote 8): the auxiliary BN and all
AdvAmd state are stripped from every model before use.

Examples:
    >>> results = validate_advamd("advamd.pt", "data/digits-det.yaml", attacks="fgsm,pgd", eps="0.01,0.1",
    ...                           baseline="vanilla.pt", save_json=True)
    >>> print(results["markdown"])
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from ultralytics.cfg import check_dict_alignment, get_save_dir
from ultralytics.utils import (
    DEFAULT_CFG_DICT,
    LOGGER,
    IterableSimpleNamespace,
    colorstr,
)
from ultralytics.utils.torch_utils import select_device

from yolo_advamd.attacks import build_attack
from yolo_advamd.attacks.objectives import check_terms
from yolo_advamd.attacks.settings import attack_grid, attack_settings, check_attack_labels
from yolo_advamd.checkpoint import attack_copy, check_local_weights, load_defense, load_model, task_of
from yolo_advamd.corruptions import (
    MPC,
    RPC,
    SEVERITIES,
    corrupted_sets,
    corruption_split,
    parse_corruptions,
    parse_severities,
    robustness,
)
from yolo_advamd.corruptions import column_name as corruption_column
from yolo_advamd.data import resolve_dataset
from yolo_advamd.results_table import BENIGN, column_name, delta, write_table
from yolo_advamd.tasks import TASKS
from yolo_advamd.validators import VALIDATORS

WHITE_BOX = "adversarial validation needs the model's gradients (exported formats such as ONNX cannot be attacked)"


def validate_advamd(
    model: str | Path | nn.Module,
    data: str | None = None,
    attacks: str | list[str] = ("fgsm", "pgd"),
    eps: str | float | list[float] = (0.01, 0.1),
    baseline: str | Path | nn.Module | None = None,
    attack_model: str | Path | nn.Module | None = None,
    save_json: bool = False,
    save_adv: bool = False,
    imgsz: int | None = None,
    batch: int = 16,
    device: str | None = None,
    project: str | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    norm: str | int = "inf",
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool | None = None,
    deepfool: str | None = None,
    attack_terms: str = "all",
    attack_labels: str = "gt",
    attack_conf: float = 0.25,
    seed: int = 0,
    corruptions: str | list[str] | None = None,
    severities: str | list[int] = SEVERITIES,
    defense: str | Path | None = None,
    defense_adaptive: bool = False,
    **overrides,
) -> dict:
    """Validate a model (detect, segment, classify) on the benign val set and its adversarial versions; write the table.

    Each model (and `baseline`) is evaluated on the benign images, then once per attack × ε on images attacked
    batch-wise on the device, white-box against that same model, or against `attack_model` when one is named (the
    transfer setting: the same attacked model then serves every row). Models are stripped to their main BN first.

    Args:
        model (str | Path | nn.Module): The model under test: an amended or stock `.pt` checkpoint.
        data (str | None): Data YAML (or a classification folder), e.g. `data/coco.yaml`, or an embedded set
            (`data/digits-det.yaml`, `data/digits-seg.yaml`, `data/digits-cls.yaml`, built on first use); the
            model's task's embedded set when None.
        attacks (str | list[str]): Attack names (`fgsm`, `pgd`, `deepfool`), comma-separated or a list; empty for
            benign validation only.
        eps (str | float | list[float]): L-inf (or L2) budgets on images scaled to [0, 1], comma-separated or a list,
            each a number or a fraction such as 8/255, in (0, 1] for L-inf.
        baseline (str | Path | nn.Module | None): A second model evaluated the same way; the table adds its row and
            the Δ (model − baseline).
        attack_model (str | Path | nn.Module | None): Transfer setting: attack this model instead of each evaluated one.
        save_json (bool): Write COCO-format predictions per run and score them with pycocotools (`coco/...`).
        save_adv (bool): Write each attacked val set as PNG images and YOLO labels (see
            `AdvDetectionValidator.save_images`), with a `data.yaml` other tools can read.
        imgsz (int | None): Validation image size; the model's training `imgsz` when None.
        batch (int): Validation batch size (attacks run on a whole batch at once).
        device (str | None): Ultralytics device string, e.g. `0` or `cpu`.
        project (str | None): Parent directory of the run; `<Ultralytics runs_dir>/advamd_val` when None.
        name (str | None): Run name, `exp` when None, incremented (`exp2`, ...) unless `exist_ok`.
        exist_ok (bool): Reuse an existing run directory.
        norm (str | int): Attack norm, `inf` or 2.
        steps (int | None): Iterations of pgd and deepfool (`DEFAULT_STEPS`: 10 and 5 when None); fgsm is always one
            step of ε.
        step_size (float | None): Per-step size of pgd and deepfool; the attack's default when None.
        random_start (bool | None): Start from a random point of the ε-ball; True for pgd only when None.
        deepfool (str | None): DeepFool's variant, `fast` or `exact` (the paper's); `fast` when None.
        attack_terms (str): The attacked part of the detection loss: `all` (box + cls + dfl), `cls`, `box` (box + dfl)
            or `max` (the stronger of a cls and a box attack, per image).
        attack_labels (str): The attacks' targets: `gt` (the ground truth) or `pred` (the attacked model's own
            predictions on the clean images: detections above `attack_conf` after NMS, a classifier's top-1).
        attack_conf (float): Confidence in (0, 1) above which a prediction is a target with `attack_labels=pred`.
        seed (int): Seed of the attacks' randomness.
        corruptions (str | list[str] | None): Also score each model under common corruptions (COCO-C protocol):
            `common` (the benchmark's 15), `all` (with the 4 held-out ones) or names, comma-separated or a list; the
            table adds mPC and rPC, and `corruptions.png` the score per corruption × severity.
        severities (str | list[int]): The corruption severities, 1 to 5.
        defense (str | Path | None): MagNet's checkpoint (`train_advamd.py method=magnet`): the model's row is scored
            through it (rejected images count as having no detection, the others reach the model reconstructed) and
            adds the rejection rate; the attacks are made on the model alone (the paper's setting), the baseline row
            stays bare.
        defense_adaptive (bool): Attack the model through the defense's reformer instead (an adaptive attacker).
        **overrides (Any): Ultralytics val settings (`conf`, `iou`, `max_det`, `split`, `quantize`, `workers`,
            `plots`, `fraction`, ...), checked by Ultralytics (deprecated keys such as `half` are mapped).

    Returns:
        (dict): `columns`, `rows` (per model: `name`, `attacked_by`, `stats` per column), `delta` (with a
            baseline), `corruptions` (names, severities and set columns), `settings`, `save_dir`, and the rendered
            `markdown` table.
    """
    attacks, eps = attack_grid(attacks, eps, deepfool)
    attack_kwargs = {
        "norm": norm,
        "steps": steps,
        "step_size": step_size,
        "random_start": random_start,
        "deepfool": deepfool,
        "seed": seed,
    }
    attack_runs = build_attacks(attacks, eps, **attack_kwargs)  # every setting checked before any work
    corruptions, severities = parse_corruptions(corruptions), parse_severities(severities)
    attack_labels = check_attack_labels(attack_labels, attack_conf)
    check_dict_alignment(DEFAULT_CFG_DICT, overrides)  # Ultralytics' own check: SyntaxError with suggestions
    for key, m in (("model", model), ("baseline", baseline), ("attack_model", attack_model)):
        if m is not None and not isinstance(m, nn.Module):
            check_local_weights(m, WHITE_BOX, key)
    roles = (("model", model), ("baseline", baseline), ("attack_model", attack_model))
    models = {role: load_model(m, WHITE_BOX, role) for role, m in roles if m is not None}
    task = check_tasks({role: task_of(net) for role, (net, *_) in models.items()}, save_json, save_adv)
    attack_terms = str(attack_terms).lower()
    check_terms(attack_terms, classifier=TASKS[task].classifier)
    shield = check_defense(defense, defense_adaptive, task, imgsz, attack_terms, save_adv)
    imgsz = imgsz or (shield.imgsz if shield is not None else None)
    attacker = models.pop("attack_model", None)
    data = resolve_dataset(data or TASKS[task].data)
    val_split = corruption_split(data, task, overrides.get("split") or "val") if corruptions else None
    save_dir = get_save_dir(
        IterableSimpleNamespace(project=project, name=name or "exp", task="advamd_val", mode="val", exist_ok=exist_ok)
    )
    save_dir.mkdir(parents=True, exist_ok=True)
    dev = select_device(device, batch, verbose=False)
    transfer = None
    if attacker is not None:
        net, label, train_args = attacker
        transfer = (attack_copy(net, train_args, dev), f"{label} (transfer)")
    settings = {
        "data": str(data),
        "attacks": attacks,
        "eps": eps,
        **attack_kwargs,
        "attack_terms": attack_terms,
        "attack_labels": attack_labels,
        "attack_conf": attack_conf,
        "attack_model": transfer and transfer[1],
        "corruptions": corruptions,
        "severities": severities,
        "defense": defense and str(defense),
        "defense_adaptive": defense_adaptive,
        "batch": batch,
        "imgsz": imgsz,
        **overrides,
    }
    sets = corrupted_sets(val_split, corruptions, severities) if corruptions else {}
    val_args = {
        **overrides,
        "data": data,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "save_json": save_json,
        "plots": overrides.get("plots", False),
        "mode": "val",
    }
    rows = []
    for role, (net, label, train_args) in models.items():
        victim, attacked_by = transfer or (attack_copy(net, train_args, dev), f"{label} (white-box)")
        guard = shield if role == "model" else None
        if guard is not None:
            label = f"{label} + MagNet"
            attacked_by += " through the reformer" if defense_adaptive else ""
        row = {"name": label, "role": role, "attacked_by": attacked_by, "stats": {}}
        for attack in attack_runs.values():  # the same random starts for every row
            attack.reset()
        runs = [
            (BENIGN, None, None),
            *((c, a, None) for c, a in attack_runs.items()),
            *((corruption_column(*ns), None, images) for ns, images in sets.items()),
        ]
        loader = None  # built by the first run, shared by the others on the split's own images
        for i, (column, attack, images) in enumerate(runs, 1):
            LOGGER.info(f"\n{colorstr('bold', f'{role} {label}')}: {column} ({i}/{len(runs)})")
            run_dir = save_dir / role / column.replace(" ", "_")
            validator = VALIDATORS[task](
                dataloader=None if images else loader,
                save_dir=run_dir,
                args={**val_args, "imgsz": imgsz or train_args.get("imgsz", 640)},
                attack=attack,
                attack_model=victim,
                terms=attack_terms,
                images=images,
                attack_labels=attack_labels,
                attack_conf=attack_conf,
                defense=guard,
                defense_adaptive=defense_adaptive,
                **({"adv_dir": run_dir / "adversarial"} if save_adv and attack is not None else {}),
            )
            row["stats"][column] = {k: float(v) for k, v in validator(model=net).items()}
            loader = loader if images else validator.dataloader
        if sets:
            row["stats"].update(robustness(row["stats"], corruptions, severities))
        rows.append(row)
    set_columns = [corruption_column(*ns) for ns in sets]
    results = {
        "task": task,
        "columns": [
            BENIGN,
            *(column_name(a, e) for a in attacks for e in eps),
            *set_columns,
            *((MPC, RPC) if sets else ()),
        ],
        "rows": rows,
        "delta": delta(rows),
        "corruptions": {"names": corruptions, "severities": severities, "columns": set_columns},
        "settings": settings,
        "save_dir": str(save_dir),
    }
    results["markdown"] = write_table(results, save_dir)
    LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}")  # the table is the caller's to print, once
    return results


def check_tasks(tasks: dict, save_json: bool, save_adv: bool) -> str:
    """Return the task of the models to validate (`{role: task}`), refusing mixed or unsupported tasks and
    detection-only outputs for other tasks, before any work."""
    task = tasks["model"]
    if task not in VALIDATORS:
        raise ValueError(f"model is a {task} model: val_advamd validates {', '.join(VALIDATORS)} models")
    for role in ("baseline", "attack_model"):
        if tasks.get(role, task) != task:
            raise ValueError(f"{role} is a {tasks[role]} model and model a {task} one: use models of one task")
    if task != "detect" and (save_json or save_adv):
        raise ValueError(
            f"save_json and save_adv write detection formats (COCO boxes, YOLO box labels): leave them "
            f"off for a {task} model"
        )
    return task


def check_defense(
    defense, adaptive: bool, task: str, imgsz: int | None, terms: str, save_adv: bool
) -> nn.Module | None:
    """Load MagNet's autoencoder for `defense=` (None without one), refusing settings it does not fit, before any work.

    Its threshold holds at the image size it was calibrated at, on images of its task's dataset.
    """
    if defense is None:
        if adaptive:
            raise ValueError("defense_adaptive=True attacks through MagNet's reformer: pass defense=magnet.pt too")
        return None
    shield = load_defense(defense)
    if shield.task != task:
        raise ValueError(f"defense={defense} was fit to a {shield.task} model's images and model is a {task} model")
    if imgsz is not None and imgsz != shield.imgsz:
        raise ValueError(
            f"imgsz={imgsz} differs from imgsz={shield.imgsz}, at which defense={defense} set its threshold: "
            "leave imgsz= out"
        )
    if adaptive and terms == "max":
        raise ValueError(
            "defense_adaptive=True attacks one loss through the reformer: use attack_terms=all, cls or box"
        )
    if save_adv:
        raise ValueError(
            "save_adv writes the attacked images, which do not depend on defense=: run it without defense="
        )
    return shield


def build_attacks(attacks: list[str], eps: list[float], norm, steps, step_size, random_start, deepfool, seed) -> dict:
    """Return a fresh attack per attack × ε, keyed by table column, resolved by `attack_settings` (its defaults).

    FGSM is one step of size ε: `steps` and `step_size` apply to the iterative attacks (PGD, DeepFool) only, and
    `deepfool` to DeepFool only.
    """
    out = {}
    for a in attacks:
        own = {"steps": steps, "step_size": step_size} if a != "fgsm" else {}
        if a == "deepfool":
            own["deepfool"] = deepfool
        for e in eps:
            settings = attack_settings(a, e, norm, random_start=random_start, key="attacks", **own)
            out[column_name(a, e)] = build_attack(settings.pop("attack"), **settings, seed=seed)
    return out
