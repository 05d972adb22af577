#!/usr/bin/env python
"""Train throughput: a loop written the way peer code is, against imbench's loop switch by switch.

    python scripts/bench.py                          # everything, on the GPU
    python scripts/bench.py --parts resnet32 --quick --device cpu   # a smoke run anywhere

Parts (all in this one process, on the same device and data sizes):
  resnet32  ResNet-32, batch 128, on a CIFAR-10-LT IF-100-sized set (12,406 random 32x32 images,
            written as real CIFAR pickles and read by imbench's reader):
            (a) reference: PIL images through torchvision transforms (RandomCrop(32, padding=4),
                RandomHorizontalFlip, ToTensor, Normalize) in DataLoader workers, fp32, eager,
                torch.optim.SGD, loss.item() every step;
            (b) imbench's `run()` with the trainer.* speed switches turned on one at a time.
  resnet50  timm ResNet-50 at 224 px, batch 128 (multi-label BCE), on JPEGs written in the COCO
            2017 layout: (a) the same reference style (PIL decode + RandomResizedCrop in workers),
            (b) imbench's loop on dataset=coco, (c) imbench's train step on a synthetic batch
            already on the GPU (the input-pipeline ceiling).
  pack      N copies of the resnet32 run started together on the one GPU (N = --pack), as a
            sweep with N parallel jobs would run them: aggregate images/s against N = 1.

Prints one JSON object (also written to --json) and a table with ours / reference and peak
GPU memory. Timings skip each run's first epoch (warm-up, cuDNN autotuning, graph capture).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SWITCHES = ("data_on_device", "amp", "channels_last", "fused_optimizer", "cuda_graphs", "cudnn_benchmark")
# (label, switches turned on); each row adds one to the row before
LADDER = (
    ("eager fp32, DataLoader", ()),
    ("+ data_on_device", ("data_on_device",)),
    ("+ amp (bf16)", ("data_on_device", "amp")),
    ("+ channels_last", ("data_on_device", "amp", "channels_last")),
    ("+ fused_optimizer", ("data_on_device", "amp", "channels_last", "fused_optimizer")),
    ("+ cuda_graphs, cudnn_benchmark (the defaults)", SWITCHES),
)


# ---------------------------------------------------------------- data in the real formats


def write_cifar10(root: Path, seed: int = 0) -> None:
    """Full-size CIFAR-10 pickles (50,000 + 10,000 random images) under root/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.repeat(np.arange(10), 5000))
    for i, chunk in enumerate(np.array_split(np.arange(50000), 5), start=1):
        batch = {b"labels": labels[chunk].tolist(), b"data": rng.integers(0, 256, (len(chunk), 3072), dtype=np.uint8)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"labels": np.repeat(np.arange(10), 1000).tolist(), b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = [f"class_{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def _write_jpeg(args) -> None:
    path, seed, size = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    # smooth colour fields plus grain: file sizes and decode cost near those of photographs
    low = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.BILINEAR)
    grain = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_coco(root: Path, num_train: int, num_val: int, workers: int, size=(480, 640), seed: int = 0) -> None:
    """COCO 2017 layout: instances JSON files and 640x480 JPEGs, 80 categories, 1-4 labels an image."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, count, offset in (("train2017", num_train, 0), ("val2017", num_val, num_train)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = offset + i + 1
            name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
            for category in rng.choice(80, size=rng.integers(1, 5), replace=False):
                annotations.append({"id": len(annotations) + 1 + offset * 10, "image_id": image_id,
                                    "category_id": int(category) + 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0})
            jobs.append((root / split / name, seed + image_id, size))
        content = {"info": {}, "licenses": [], "images": images, "annotations": annotations,
                   "categories": [{"id": c + 1, "name": f"class_{c}", "supercategory": "x"} for c in range(80)]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=32))


# ---------------------------------------------------------------- the reference loop


class PilCifar(torch.utils.data.Dataset):
    """CIFAR as peer code holds it: HWC uint8 arrays, one PIL image per sample, torchvision transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images, self.labels = images_hwc, labels
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class PilCoco(torch.utils.data.Dataset):
    """COCO files decoded by PIL per sample, RandomResizedCrop + flip, multi-hot targets."""

    def __init__(self, paths: list[str], targets: torch.Tensor, image_size: int):
        from torchvision import transforms

        self.paths, self.targets = paths, targets
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.targets[i]


def reference_loop(model, dataset, loss_fn, epochs: int, workers: int, device: torch.device, max_steps=None) -> dict:
    """The peers' loop: DataLoader workers, fp32, eager, SGD, loss.item() each step. Images/s over
    the epochs after the first."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=128, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    reset_peak(device)
    seen, seconds = 0, 0.0
    for epoch in range(epochs):
        synchronize(device)
        started, images = time.perf_counter(), 0
        for step, (inputs, targets) in enumerate(loader):
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            images += len(inputs)
            if max_steps and step + 1 >= max_steps:
                break
        synchronize(device)
        if epoch > 0 or epochs == 1:
            seen, seconds = seen + images, seconds + time.perf_counter() - started
    return {"images_per_s": round(seen / seconds, 1), "peak_gpu_mb": peak_mb(device), "workers": workers}


# ---------------------------------------------------------------- imbench's loop


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def switch_overrides(on: tuple[str, ...]) -> list[str]:
    return [f"trainer.{name}={'true' if name in on else 'false'}" for name in SWITCHES]


def ours(overrides: list[str], device: torch.device) -> dict:
    """imbench's run() as a user runs it; throughput from its metrics.json."""
    from imbalance_bench.train import run

    reset_peak(device)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        metrics = run(compose(overrides), run_dir)
        wall = time.perf_counter() - started
        rows = summary_rows(Path(run_dir))
    timed = rows[1:] if len(rows) > 1 else rows
    eval_s = [float(r["eval_s"]) for r in timed if r["eval_s"]]
    train_s = [float(r["train_s"]) for r in timed]
    return {
        "images_per_s": metrics["train_images_per_s"],
        "peak_gpu_mb": peak_mb(device),
        "epoch_train_s": round(float(np.mean(train_s)), 4),
        "epoch_eval_s": round(float(np.mean(eval_s)), 4) if eval_s else None,
        "wall_s": round(wall, 2),
        "switches": metrics["switches"],
    }


def synthetic_ceiling(overrides: list[str], steps: int, device: torch.device) -> dict:
    """imbench's train step (all switches as configured) on one random uint8 batch already on the
    device: the rate the GPU reaches when the input pipeline costs nothing."""
    from imbalance_bench import build as T
    from imbalance_bench.distributed import World
    from imbalance_bench.step import Precision, TrainStep

    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        T.seed_everything(cfg.seed)
        data = T.build_data(cfg, Path(run_dir), World())
        switches = T.resolve_switches(cfg, device, data, World())
        criterion, _ = T.build_loss(cfg, data, device)
        model = T.build_model(cfg, data, criterion, device, switches.channels_last, World())
        optimizer, _ = T.build_optimizer(cfg, model, criterion, switches)
    precision = Precision(device, switches.amp, cfg.trainer.amp_dtype)
    step = TrainStep(model, criterion, optimizer, precision, switches.channels_last, switches.cuda_graphs)
    batch = cfg.trainer.batch_size
    images = torch.randint(0, 256, (batch, *data.train.image_shape), dtype=torch.uint8, device=device)
    targets = (torch.rand(batch, data.num_classes, device=device) < 0.05).float()
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    reset_peak(device)
    for i in range(2 * steps):
        if i == steps:  # the first half warms up
            synchronize(device)
            started = time.perf_counter()
        loss = step(data.transform(images, train=True, generator=generator), targets, None)
    float(loss)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * batch / seconds, 1), "peak_gpu_mb": peak_mb(device)}


# ---------------------------------------------------------------- parts


STEP_VARIANTS = (
    # (label, amp, channels_last, cuda_graphs, compile); fused SGD except in the eager row
    ("fp32, eager", False, False, False, False),
    ("fp32, graph", False, False, True, False),
    ("bf16, graph", True, False, True, False),
    ("bf16, channels_last, graph", True, True, True, False),
    ("bf16, compile, graph", True, False, True, True),
    ("bf16, channels_last, compile, graph", True, True, True, True),
)


def part_step(args, device: torch.device, root: Path) -> dict:
    """The ResNet-32 train step alone on a synthetic batch already on the device, switch by switch,
    and the eval forward (batch 512): where the time goes once the input pipeline is free."""
    from imbalance_bench.data.images import BatchTransform
    from imbalance_bench.losses import SoftmaxCrossEntropy
    from imbalance_bench.models import create_model
    from imbalance_bench.step import Precision, TrainStep

    steps = 10 if args.quick else 200
    batch = 128
    transform = BatchTransform(mean=list(CIFAR_MEAN), std=list(CIFAR_STD), crop_padding=4, hflip=True)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    eval_images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=device)
    rows = []
    for label, amp, channels_last, graphs, compiled in STEP_VARIANTS:
        if device.type != "cuda" and (graphs or compiled):
            continue
        torch.manual_seed(0)
        model = create_model("resnet32", num_classes=10, in_chans=3).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        fused = graphs and device.type == "cuda"
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, fused=fused or None)
        precision = Precision(device, amp, "bfloat16")
        compiled_model = torch.compile(model) if compiled else None
        step = TrainStep(model, SoftmaxCrossEntropy(), optimizer, precision, channels_last, graphs, compiled_model)
        reset_peak(device)
        started = time.perf_counter()
        for _ in range(5):  # warm-up, compilation and capture
            loss = step(transform(images, True, generator), labels, None)
        float(loss)
        warmup_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(steps):
            loss = step(transform(images, True, generator), labels, None)
        float(loss)
        train_rate = steps * batch / (time.perf_counter() - started)
        forward = model if compiled_model is None else compiled_model
        model.eval()
        with torch.no_grad():
            for i in range(2 * 20):
                if i == 20:
                    synchronize(device)
                    started = time.perf_counter()
                with precision.autocast():
                    out = forward(transform(eval_images, False).contiguous(
                        memory_format=torch.channels_last if channels_last else torch.contiguous_format))
            out.float().sum().item()
        eval_rate = 20 * 512 / (time.perf_counter() - started)
        model.train()
        rows.append({"variant": label, "train_images_per_s": round(train_rate, 1), "warmup_s": round(warmup_s, 2),
                     "eval_images_per_s": round(eval_rate, 1), "peak_gpu_mb": peak_mb(device)})
        print(f"step {rows[-1]}", file=sys.stderr)
    started = time.perf_counter()
    for _ in range(steps):
        out = transform(images, True, generator)
    synchronize(device)
    augment_rate = steps * batch / (time.perf_counter() - started)
    return {"rows": rows, "augment_images_per_s": round(augment_rate, 1), "batch": batch}


def part_resnet32(args, device: torch.device, root: Path) -> dict:
    from imbalance_bench.data.cifar import load_cifar
    from imbalance_bench.data.profiles import long_tail_counts, select_per_class
    from imbalance_bench.models import create_model

    write_cifar10(root)
    raw = load_cifar(str(root), "cifar10", False)
    subset = select_per_class(raw.train_labels, long_tail_counts(5000, 10, 100, "exp"), 0)
    limit = ["dataset.limit_train=2000", "dataset.limit_test=500"] if args.quick else []
    if args.quick:
        subset = subset[:2000]
    images_hwc = raw.train_images[subset].transpose(0, 2, 3, 1).copy()
    result = {"train_images": int(len(subset))}
    torch.manual_seed(0)
    result["reference"] = reference_loop(
        create_model("resnet32", num_classes=10, in_chans=3), PilCifar(images_hwc, raw.train_labels[subset]),
        torch.nn.CrossEntropyLoss(), args.epochs, args.workers, device,
    )
    print(f"resnet32 reference: {result['reference']}", file=sys.stderr)
    base = ["experiment=cifar_lt", "dataset=cifar10_lt", f"dataset.root={root}", "dataset.imbalance_factor=100",
            "loss=ce", "reweight=none", f"trainer.epochs={args.epochs}", "trainer.progress_bar=false",
            f"trainer.device={device}", *limit]
    result["ours"] = []
    for label, on in LADDER:
        row = {"variant": label, **ours(base + switch_overrides(on), device)}
        row["ratio"] = round(row["images_per_s"] / result["reference"]["images_per_s"], 2)
        per_run = 200 * (row["epoch_train_s"] + (row["epoch_eval_s"] or 0.0))
        row["est_200_epoch_run_s"] = round(per_run, 1)
        result["ours"].append(row)
        print(f"resnet32 {label}: {row}", file=sys.stderr)
    return result


def part_resnet50(args, device: torch.device, root: Path) -> dict:
    from imbalance_bench.data.coco import read_instances
    from imbalance_bench.models import create_model

    num_train, num_val = (256, 64) if args.quick else (args.coco_images, 256)
    write_coco(root / "coco", num_train, num_val, workers=args.workers_large)
    ann = read_instances(root / "coco" / "annotations" / "instances_train2017.json")
    paths = [str(root / "coco" / "train2017" / name) for name in ann.file_names]
    size = 64 if args.quick else 224
    steps = 4 if args.quick else 30
    result = {"train_images": num_train, "image_size": size, "workers": args.workers_large}
    torch.manual_seed(0)
    result["reference"] = reference_loop(
        create_model("resnet50", num_classes=80, in_chans=3, pretrained=False),
        PilCoco(paths, torch.from_numpy(ann.targets.astype(np.float32)), size),
        torch.nn.BCEWithLogitsLoss(), args.epochs, args.workers_large, device,
    )
    print(f"resnet50 reference: {result['reference']}", file=sys.stderr)
    base = ["experiment=focal_coco_f2", f"dataset.root={root / 'coco'}", f"dataset.image_size={size}",
            "model.pretrained=false", "trainer.batch_size=128", "trainer.eval_batch_size=128", f"trainer.epochs={args.epochs}", f"trainer.eval_every={args.epochs}",
            f"trainer.num_workers={args.workers_large}", "trainer.progress_bar=false", f"trainer.device={device}"]
    result["ours"] = {"variant": "dataset=coco, the defaults", **ours(base, device)}
    print(f"resnet50 ours: {result['ours']}", file=sys.stderr)
    result["synthetic"] = synthetic_ceiling(base, steps, device)
    result["ours"]["ratio"] = round(result["ours"]["images_per_s"] / result["reference"]["images_per_s"], 2)
    result["ours_over_synthetic"] = round(result["ours"]["images_per_s"] / result["synthetic"]["images_per_s"], 3)
    print(f"resnet50 synthetic: {result['synthetic']}", file=sys.stderr)
    return result


def part_pack(args, device: torch.device, root: Path) -> dict:
    """N resnet32 runs at once on one GPU: `imbench -m hydra/launcher=pack hydra.launcher.n_jobs=N`
    over N seeds. Aggregate = all jobs' train images / the sweep's wall time (process start-up
    included); steady = the sum of the jobs' own train images/s while they overlap."""
    if not (root / "cifar-10-batches-py").exists():
        write_cifar10(root)
    limit = ["dataset.limit_train=2000", "dataset.limit_test=500"] if args.quick else []
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rows = []
    for n in args.pack:
        sweep = root / f"pack{n}"
        command = [sys.executable, "-m", "imbalance_bench", "-m", "hydra/launcher=pack", f"hydra.launcher.n_jobs={n}",
                   "experiment=cifar_lt", f"dataset.root={root}", "loss=ce", "reweight=none",
                   f"trainer.epochs={args.pack_epochs}", "trainer.progress_bar=false", f"trainer.device={device}",
                   "seed=" + ",".join(str(s) for s in range(n)), f"hydra.sweep.dir={sweep}", *args.overrides, *limit]
        started = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"bench: the packed sweep failed:\n{proc.stderr[-2000:]}")
        metrics = [json.loads((sweep / str(j) / "metrics.json").read_text()) for j in range(n)]
        images = sum(int(r["train_images"]) for j in range(n) for r in summary_rows(sweep / str(j)))
        per_job = [m["train_images_per_s"] for m in metrics]
        rows.append({"jobs": n, "wall_s": round(wall, 2), "aggregate_images_per_s": round(images / wall, 1),
                     "steady_images_per_s": round(sum(per_job), 1), "per_job_images_per_s": per_job})
        print(f"pack {n}: {rows[-1]}", file=sys.stderr)
    for row in rows:
        row["steady_speedup_over_1"] = round(row["steady_images_per_s"] / rows[0]["steady_images_per_s"], 2)
    return {"rows": rows, "epochs": args.pack_epochs}


def part_full(args, device: torch.device, root: Path) -> dict:
    """One whole recipe run (CIFAR-10-LT IF 100, ResNet-32, 200 epochs, evaluated every epoch)
    through the CLI, as a user starts it: its wall time, start-up included."""
    if not (root / "cifar-10-batches-py").exists():
        write_cifar10(root)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    epochs = ["trainer.epochs=2", "dataset.limit_train=1000", "dataset.limit_test=200"] if args.quick else []
    command = [sys.executable, "-m", "imbalance_bench", "experiment=cifar_lt", f"dataset.root={root}", "loss=ce",
               "reweight=none", "trainer.progress_bar=false", f"trainer.device={device}",
               f"hydra.run.dir={root / 'full'}", *args.overrides, *epochs]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"bench: the full run failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((root / "full" / "metrics.json").read_text())
    rows = summary_rows(root / "full")
    return {"wall_s": round(wall, 1), "train_time_s": metrics["train_time_s"], "epochs": metrics["epochs_completed"],
            "train_images_per_s": metrics["train_images_per_s"],
            "eval_s_total": round(sum(float(r["eval_s"]) for r in rows if r["eval_s"]), 1),
            "train_s_total": round(sum(float(r["train_s"]) for r in rows), 1), "overrides": args.overrides}


def summary_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- helpers and main


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def cli_table(result: dict) -> str:
    lines = ["| command | what | wall (median) | heavy modules imported |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['what']} | {r['wall_s']} s | {r['imports']} |" for r in result["cli"]["rows"]]
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = ["| part | variant | images/s | ours / reference | peak GPU MB | est. 200-epoch run (s) |",
             "|---|---|---|---|---|---|"]
    if "resnet32" in result:
        r = result["resnet32"]
        ref = r["reference"]
        lines.append(f"| resnet32 | reference (PIL, {ref['workers']} workers, fp32, eager) | {ref['images_per_s']:,.0f} "
                     f"| 1.00 | {ref['peak_gpu_mb']} | |")
        for row in r["ours"]:
            lines.append(f"| resnet32 | {row['variant']} | {row['images_per_s']:,.0f} | {row['ratio']:.2f} "
                         f"| {row['peak_gpu_mb']} | {row['est_200_epoch_run_s']} |")
    if "resnet50" in result:
        r = result["resnet50"]
        ref = r["reference"]
        lines.append(f"| resnet50 | reference (PIL, {ref['workers']} workers, fp32, eager) | {ref['images_per_s']:,.0f} "
                     f"| 1.00 | {ref['peak_gpu_mb']} | |")
        lines.append(f"| resnet50 | {r['ours']['variant']} | {r['ours']['images_per_s']:,.0f} | {r['ours']['ratio']:.2f} "
                     f"| {r['ours']['peak_gpu_mb']} | |")
        lines.append(f"| resnet50 | synthetic batch on the GPU (ceiling) | {r['synthetic']['images_per_s']:,.0f} | "
                     f"ours / synthetic = {r['ours_over_synthetic']:.3f} | {r['synthetic']['peak_gpu_mb']} | |")
    if "step" in result:
        for row in result["step"]["rows"]:
            lines.append(f"| step | resnet32 train step, {row['variant']} | {row['train_images_per_s']:,.0f} | "
                         f"eval {row['eval_images_per_s']:,.0f}/s, warm-up {row['warmup_s']} s | {row['peak_gpu_mb']} | |")
    if "accuracy" in result:
        for row in result["accuracy"]["rows"]:
            lines.append(f"| accuracy | MNIST-LT main job, seed {row['seed']}: top-1 switches off "
                         f"{100 * row['reference_path']['top1']:.2f} / defaults {100 * row['fast_path']['top1']:.2f} | | "
                         f"difference {row['difference_points']:+.2f} points | | |")
    if "pack" in result:
        for row in result["pack"]["rows"]:
            lines.append(f"| pack | {row['jobs']} resnet32 run(s) at once: steady / with start-up | "
                         f"{row['steady_images_per_s']:,.0f} / {row['aggregate_images_per_s']:,.0f} "
                         f"| x{row['steady_speedup_over_1']:.2f} vs 1 job | | |")
    if "full" in result:
        r = result["full"]
        lines.append(f"| full | CIFAR-10-LT IF 100, {r['epochs']} epochs through the CLI | {r['train_images_per_s']:,.0f} "
                     f"| train {r['train_s_total']} s + eval {r['eval_s_total']} s | | {r['wall_s']} (wall) |")
    return "\n".join(lines)


def part_accuracy(args, device: torch.device, root: Path) -> dict:
    """The main job (long-tailed MNIST, 4 epochs) with every speed switch off and with the
    defaults, same seeds: top-1 must agree within noise (real MNIST under --mnist-root)."""
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for name, overrides in (("reference_path", switch_overrides(()) + ["trainer.compile=false"]),
                                ("fast_path", [])):
            with tempfile.TemporaryDirectory() as run_dir:
                from imbalance_bench.train import run

                started = time.perf_counter()
                cfg = compose(["experiment=mnist_lt_cb_focal", f"dataset.root={args.mnist_root}", f"seed={seed}",
                               "trainer.progress_bar=false",
                               f"trainer.device={device}", *overrides])
                metrics = run(cfg, run_dir)
                row[name] = {"top1": metrics["final"]["top1"], "wall_s": round(time.perf_counter() - started, 1)}
        row["difference_points"] = round(100 * (row["fast_path"]["top1"] - row["reference_path"]["top1"]), 2)
        rows.append(row)
        print(f"accuracy {row}", file=sys.stderr)
    return {"rows": rows, "max_abs_difference_points": max(abs(r["difference_points"]) for r in rows)}


#: command lines whose start-up the cli part times: what a user waits for before anything trains
CLI_COMMANDS = {"--help": ["--help"], "--cfg job": ["--cfg", "job"],
                "a one-line config error": ["trainer.epochs=0"],
                "--cfg job, COCO focal preset": ["experiment=focal_coco_f2", "--cfg", "job"]}


def part_cli(args, device: torch.device, root: Path) -> dict:
    """Wall time of `imbench` start-ups that train nothing (help, printing the config, a config error),
    each the median of --cli-repeats fresh processes, and the heavy modules each one imported."""
    probe = ("import runpy, sys; sys.argv = ['imbench', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('imbalance_bench', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'torchvision', 'timm', 'sklearn') if m in sys.modules]\n"
             "print('HEAVY=' + ','.join(heavy), file=sys.stderr)")
    rows = []
    for name, argv in CLI_COMMANDS.items():
        times, heavy = [], ""
        for _ in range(1 if args.quick else args.cli_repeats):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=root)
            times.append(time.perf_counter() - started)
            heavy = proc.stderr.rsplit("HEAVY=", 1)[-1].strip()
        rows.append({"command": f"imbench {' '.join(argv)}", "what": name, "wall_s": round(sorted(times)[len(times) // 2], 2),
                     "imports": heavy or "none of torch, torchvision, timm, sklearn"})
        print(f"cli {rows[-1]}", file=sys.stderr)
    return {"rows": rows}


PARTS = {"cli": part_cli, "step": part_step, "accuracy": part_accuracy, "full": part_full, "resnet32": part_resnet32, "resnet50": part_resnet50, "pack": part_pack}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="step,resnet32,resnet50,pack", help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measured run (the first is not timed)")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader workers for CIFAR (LDAM-DRW's default)")
    parser.add_argument("--workers-large", type=int, default=min(12, os.cpu_count() or 1),
                        help="DataLoader workers for the JPEG part (reference and ours)")
    parser.add_argument("--coco-images", type=int, default=2560, help="train JPEGs written for the resnet50 part")
    parser.add_argument("--pack", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--pack-epochs", type=int, default=10, help="epochs of each packed run")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra imbench overrides for the pack and full parts")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2],
                        help="seeds of the accuracy part")
    parser.add_argument("--mnist-root", default=os.environ.get("IMBENCH_DATA_ROOT", "data"),
                        help="folder with the MNIST idx files (accuracy part)")
    parser.add_argument("--cli-repeats", type=int, default=5, help="fresh processes per command of the cli part")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing useful")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    device = torch.device(args.device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "epochs": args.epochs, "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in parts:
            result[part] = PARTS[part](args, device, root)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if "cli" in result:
        print(cli_table(result))
    if set(result) & (set(PARTS) - {"cli"}):
        print(table(result))


if __name__ == "__main__":
    main()
