"""Time one attack of each kind against a stock Ultralytics training step, in one process.

For yolov8n at each image size (batch 16 by default, synthetic images and boxes), prints the median wall time of a
stock training step (forward + backward through `DetectionModel.loss`), FGSM, PGD-3, PGD-10 and DeepFool, and each
as a ratio to the stock step. FGSM costs one forward and one input-only backward pass: about 0.7 of a stock step.
DeepFool attacks objects whose labels are the model's own predictions (all correct at the start, the costly case)
and runs a fixed number of steps, in each variant: `fast` (each step one forward and one backward pass), `exact`
(each step one forward and (candidates - 1) * objects-per-image backward passes), and the exact one with its
backward passes batched (`torch.autograd.grad(..., is_grads_batched=True)`, vmap over the backward, in chunks of
`--vjp-chunk` vector-Jacobian products): the same FLOPs, vectorized.

Examples:
    $ python benchmarks/attack_speed.py --imgsz 160 320 --batch 16 --repeats 3
    $ python benchmarks/attack_speed.py --imgsz 160 --nc 80 --objects 20 --repeats 1   # about a COCO scene
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

import yolo_advamd  # noqa: F401  (offline environment before Ultralytics is imported)
from yolo_advamd.attacks import DeepFool, build_attack
from yolo_advamd.attacks.objectives import DetectionObjective
from yolo_advamd.cli import use_all_cores


class BatchedDeepFool(DeepFool):
    """The exact DeepFool with its per-(object rank, candidate) input gradients computed `chunk` at a time by one
    batched backward (`is_grads_batched=True`) instead of one backward each."""

    chunk = 8

    def candidate_gradients(self, margins, adv, pairs):
        """Yield the gradient of each pair, from batched backward passes of `chunk` pairs."""
        for start in range(0, len(pairs), self.chunk):
            chunk = pairs[start : start + self.chunk]
            v = torch.zeros(len(chunk), *margins.shape, dtype=margins.dtype, device=margins.device)
            for i, (idx, j) in enumerate(chunk):
                v[i, idx, j] = 1.0
            yield from torch.autograd.grad(margins, adv, v, retain_graph=True, is_grads_batched=True)[0]


def synthetic_batch(batch: int, imgsz: int, objects: int, nc: int) -> dict:
    """Return a preprocessed detection batch of random images with `objects` random boxes per image."""
    g = torch.Generator().manual_seed(0)
    n = batch * objects
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat([0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.1 + 0.2 * torch.rand(n, 2, generator=g)], 1),
        "batch_idx": torch.arange(batch).repeat_interleave(objects).float(),
    }


def median_time(fn, repeats: int) -> float:
    """Return the median wall time in seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(imgsz: int, args: argparse.Namespace) -> None:
    """Time the stock step and each attack at one image size and print the table."""
    torch.manual_seed(0)
    model = DetectionModel(args.model, nc=args.nc, verbose=False)
    model.args = get_cfg()
    batch = synthetic_batch(args.batch, imgsz, args.objects, args.nc)
    trained = copy.deepcopy(model).train()  # a copy: its BN statistics change at every step, the attacked model's not

    def stock_step():
        trained.loss(batch)[0].sum().backward()
        trained.zero_grad(set_to_none=True)

    model.train(args.mode == "train")
    objective = DetectionObjective(model, batch)
    with objective.frozen(), torch.no_grad():
        fooled = {**batch, "cls": objective.object_logits(batch["img"]).argmax(1, keepdim=True).float()}

    def attack(name: str, data: dict, **kwargs):
        build_attack(name, eps=args.eps, **kwargs)(data["img"], DetectionObjective(model, data))

    rows = {"stock training step": median_time(stock_step, args.repeats)}
    rows["FGSM"] = median_time(lambda: attack("fgsm", batch), args.repeats)
    rows["PGD-3"] = median_time(lambda: attack("pgd", batch, steps=3), args.repeats)
    rows["PGD-10"] = median_time(lambda: attack("pgd", batch, steps=10), args.repeats)
    steps = args.deepfool_steps
    for variant in ("fast", "exact"):
        rows[f"DeepFool-{steps} {variant}"] = median_time(
            lambda: attack("deepfool", fooled, steps=steps, deepfool=variant), args.repeats
        )
    BatchedDeepFool.chunk = args.vjp_chunk
    batched = BatchedDeepFool(eps=args.eps, steps=steps, variant="exact")
    rows[f"DeepFool-{steps} exact, batched"] = median_time(
        lambda: batched(fooled["img"], DetectionObjective(model, fooled)), args.repeats
    )
    stock = rows["stock training step"]
    print(
        f"\n{args.model} imgsz={imgsz} batch={args.batch} objects/image={args.objects} nc={args.nc} attacked in "
        f"{args.mode} mode, eps={args.eps}, {torch.get_num_threads()} threads (CPU shared with other jobs), median of "
        f"{args.repeats}; batched: {args.vjp_chunk} vector-Jacobian products per backward"
    )
    print(f"{'':30s}{'ms':>10s}{'x stock':>10s}")
    for name, t in rows.items():
        print(f"{name:30s}{1000 * t:10.0f}{t / stock:10.2f}")


def main() -> None:
    """Parse the flags and run the benchmark for each image size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, nargs="+", default=[160, 320], help="image sizes")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (median); one warm-up call more")
    parser.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model YAML")
    parser.add_argument("--nc", type=int, default=10, help="number of classes")
    parser.add_argument("--objects", type=int, default=3, help="boxes per image")
    parser.add_argument("--eps", type=float, default=0.01, help="L-inf budget")
    parser.add_argument("--deepfool-steps", type=int, default=3, help="DeepFool steps (many backwards each)")
    parser.add_argument("--vjp-chunk", type=int, default=8, help="vector-Jacobian products per batched backward")
    parser.add_argument("--mode", choices=("eval", "train"), default="eval", help="attack the model in this mode")
    args = parser.parse_args()
    use_all_cores()  # every core, or YOLO_ADVAMD_THREADS, as the CLIs
    for imgsz in args.imgsz:
        bench(imgsz, args)


if __name__ == "__main__":
    main()
