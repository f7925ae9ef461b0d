"""Training throughput: cooplib's loop against a reference-style loop, in one run.

    python benchmarks/throughput.py            # ResNet-32 baseline, ONE-3, DML-2 at batch 128
    python benchmarks/throughput.py --quick    # tiny CPU-sized version (a test runs it)
    python benchmarks/throughput.py --precisions --model resnet20 --shape 1x28x28 --classes 10
                                               # fp32 / fp32+cl / bf16 / bf16+cl side by side

(a) cooplib: `train.fit` itself on CIFAR-shaped synthetic uint8 data held on the device
    (batched crop + flip there, bf16 autocast and channels_last on CUDA, fused SGD, no
    per-step host sync, optional torch.compile / packing as named options).
(b) reference-style: the way the published reference code trains — torchvision
    DataLoader with per-image PIL RandomCrop(32, padding=4) + RandomHorizontalFlip +
    ToTensor + Normalize in worker processes, fp32 eager, `loss.item()` every step —
    with the same Learner (same network and loss), so only the loop differs.

The first epoch of (a) is reported separately as warm-up (it includes torch.compile);
the steady state is the median `train_seconds` (the epoch's steps, without the
evaluation) of the following epochs. For (b) the first `warmup`
steps are excluded. Results go to stdout (one table) and benchmarks/results/*.json.

`--precisions` measures instead one training step (forward, loss, backward, cooplib's
SGD) of one model in four arms: fp32, fp32 + channels_last, bf16 autocast, bf16 autocast
+ channels_last. Each arm has its own copy of the same initial network and optimizer;
after `--warmup` steps each, the arms run in round-robin blocks of `--steps` steps
(the order rotated every round), so that a change of load on a shared machine hits all
arms alike. Reported per arm: the median and min/max over blocks of images/s, and the
speed-up of the medians over fp32; the load average is recorded before and after every
round. Inputs are synthetic normalised batches held on the device (no data loading).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cooplib import methods
from cooplib.engine import runtime, train
from cooplib.engine.config import RunConfig
from cooplib.data import Augment, ImageData

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_cifar(n_train: int, n_test: int, classes: int = 100, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    return ImageData("synthetic-cifar", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                     [str(i) for i in range(classes)], CIFAR_MEAN, CIFAR_STD, Augment(4, True))


class PILDataset(Dataset):
    """A torchvision-style dataset: numpy HWC uint8 -> PIL -> per-image transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x.permute(0, 2, 3, 1).numpy()
        self.y = y.numpy()
        self.tf = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loop(learner, data: ImageData, batch: int, steps: int, warmup: int, workers: int, device) -> dict:
    """img/s of the reference-style loop over `steps` steps after `warmup` steps."""
    learner.to(device).train()
    opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loader = DataLoader(PILDataset(data.x_train, data.y_train), batch_size=batch, shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0)
    done, t0, seen = 0, None, 0
    while done < warmup + steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            heads = learner(x)
            loss, _ = learner.loss(heads, y, train.TrainState(0, 1, done, len(loader)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            _ = loss.item()  # the per-step host sync of the reference code
            done += 1
            if done == warmup:
                t0 = time.perf_counter()
            elif done > warmup:
                seen += len(y)
            if done >= warmup + steps:
                break
    secs = time.perf_counter() - t0
    return {"images_per_s": seen / secs, "steps": steps, "seconds": secs}


def cooplib_loop(learner, data: ImageData, config: RunConfig) -> dict:
    """img/s of `train.fit` from its per-epoch `train_seconds` (the training steps, not the
    evaluation that follows; epoch 1 = warm-up/compile)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = train.fit(learner, data, config, Path(tmp) / "run")
    secs = [r["train_seconds"] for r in res.metrics]
    steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
    n = len(data.y_train)
    return {"images_per_s": n / steady, "epoch_seconds": secs, "warmup_seconds": secs[0], "steady_epoch_seconds": steady}


def build(method: str, model: str, packed: bool) -> methods.Learner:
    torch.manual_seed(0)
    args = {"baseline": {}, "one": {"branches": 3}, "dml": {"peers": 2}}[method]
    if packed and method != "baseline":
        args["packed"] = True
    return methods.build(method, model, 100, 3, **args)


ARMS = {"fp32": (None, False), "fp32+cl": (None, True), "bf16": (torch.bfloat16, False), "bf16+cl": (torch.bfloat16, True)}


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def precision_arms(method: str, model: str, shape: tuple[int, int, int], classes: int, batch: int, blocks: int,
                   steps: int, warmup: int, device, arms=tuple(ARMS)) -> dict:
    """img/s of one training step in each arm of `arms`, interleaved (see the module docstring)."""
    from cooplib.engine.optim import make_optimizer

    torch.manual_seed(0)
    proto = methods.build(method, model, classes, shape[0], **{"baseline": {}, "one": {"branches": 3}, "dml": {"peers": 2}}[method])
    config = RunConfig(method=method, model=model, dataset="synthetic", batch_size=batch, device=str(device),
                       progress=False, tensorboard=False)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, *shape, generator=g) for _ in range(4)]
    ys = [torch.randint(0, classes, (batch,), generator=g) for _ in range(4)]
    state = {}
    for arm in arms:
        dtype, cl = ARMS[arm]
        fmt = torch.channels_last if cl else torch.contiguous_format
        learner = copy.deepcopy(proto).to(device=device, memory_format=fmt).train()
        state[arm] = {
            "learner": learner, "opt": make_optimizer(learner, config, device), "dtype": dtype,
            "x": [x.to(device=device, memory_format=fmt) for x in xs], "y": [y.to(device) for y in ys],
            "block_images_per_s": [], "done": 0,
        }

    def run(arm: str, n: int) -> float:
        st = state[arm]
        amp = (lambda: torch.autocast(device.type, dtype=st["dtype"])) if st["dtype"] else contextlib.nullcontext
        t0 = time.perf_counter()
        for _ in range(n):
            i = st["done"] % len(xs)
            with amp():
                heads = st["learner"](st["x"][i])
                loss, _ = st["learner"].loss(heads, st["y"][i], train.TrainState(0, 1, st["done"], 100))
            st["opt"].zero_grad(set_to_none=True)
            loss.backward()
            st["opt"].step()
            st["done"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        else:
            loss.item()
        return time.perf_counter() - t0

    for arm in arms:
        run(arm, warmup)
    loads = [loadavg()]
    for b in range(blocks):
        order = list(arms[b % len(arms):]) + list(arms[:b % len(arms)])
        for arm in order:
            state[arm]["block_images_per_s"].append(batch * steps / run(arm, steps))
        loads.append(loadavg())
    rows = []
    base = statistics.median(state[arms[0]]["block_images_per_s"])
    for arm in arms:
        ips = state[arm]["block_images_per_s"]
        rows.append({"arm": arm, "precision": "bf16" if ARMS[arm][0] else "fp32", "channels_last": ARMS[arm][1],
                     "method": method, "model": model, "input_shape": list(shape), "batch": batch,
                     "images_per_s": statistics.median(ips), "images_per_s_min": min(ips), "images_per_s_max": max(ips),
                     "block_images_per_s": ips, "speedup_vs_" + arms[0]: statistics.median(ips) / base})
    return {"rows": rows, "loadavg_per_round": loads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CPU-sized run (resnet8, few images)")
    ap.add_argument("--methods", nargs="+", default=["baseline", "one", "dml"])
    ap.add_argument("--model", default=None, help="default resnet32 (resnet8 with --quick)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=None, help="training images per epoch for (a); default 50,000 on CUDA")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of (a), the first is warm-up")
    ap.add_argument("--ref-steps", type=int, default=None, help="timed steps of (b)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of (b)")
    ap.add_argument("--compile", action="store_true", help="(a) with torch.compile")
    ap.add_argument("--packed", action="store_true", help="(a) with packed branches/peers")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", action="store_true",
                    help="instead: one step in fp32, fp32+channels_last, bf16, bf16+channels_last, interleaved")
    ap.add_argument("--shape", default="3x32x32", help="--precisions: input CxHxW (1x28x28 for Fashion-MNIST)")
    ap.add_argument("--classes", type=int, default=100, help="--precisions: number of classes")
    ap.add_argument("--blocks", type=int, default=None, help="--precisions: rounds of blocks (default 8; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="--precisions: steps per block (default 5; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="--precisions: untimed steps per arm first (default 3)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="--precisions: the arms (default all four)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<date>-<device>.json)")
    args = ap.parse_args(argv)

    device = runtime.resolve_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("resnet8" if args.quick else "resnet32")
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    if args.precisions:
        return main_precisions(args, device, model, command)
    images = args.images or (256 if args.quick else 50_000 if cuda else 2_048)
    epochs = args.epochs or (2 if args.quick else 4)
    ref_steps = args.ref_steps or (2 if args.quick else 100 if cuda else 10)
    workers = args.workers if args.workers is not None else (0 if args.quick else min(8, max(1, (torch.get_num_threads() or 2))))
    batch = 32 if args.quick and args.batch == 128 else args.batch
    data = synthetic_cifar(images, batch * 2)
    config = RunConfig(method="baseline", model=model, dataset="synthetic-cifar", epochs=epochs, batch_size=batch,
                       device=str(device), compile=args.compile, progress=False, tensorboard=False, augment="default",
                       schedule="constant")  # a throughput measurement: no lr drop inside a few epochs

    resolved = runtime.resolve(config, device)
    rows = []
    for method in args.methods:
        fast = cooplib_loop(build(method, model, args.packed), data, config.replace(method=method))
        ref = reference_loop(build(method, model, False), data, batch, ref_steps, 1 if args.quick else 5, workers, device)
        rows.append({
            "method": method, "model": model, "batch": batch,
            "cooplib_images_per_s": fast["images_per_s"],
            "cooplib_s_per_50k_epoch": 50_000 / fast["images_per_s"],
            "cooplib_warmup_epoch_s": fast["warmup_seconds"],
            "cooplib_epoch_seconds": fast["epoch_seconds"],
            "reference_images_per_s": ref["images_per_s"],
            "reference_s_per_50k_epoch": 50_000 / ref["images_per_s"],
            "speedup": fast["images_per_s"] / ref["images_per_s"],
        })

    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "cooplib_dtype": "bf16 autocast" if resolved["precision"] == "bf16" else "fp32", "reference_dtype": "fp32",
        "cpu_bf16": resolved["cpu_bf16"], "loadavg": loadavg(), "threads": torch.get_num_threads(),
        "compile": args.compile, "packed": args.packed, "channels_last": resolved["channels_last"], "images_per_epoch": images,
        "epochs": epochs, "reference_steps": ref_steps, "reference_workers": workers, "quick": args.quick,
        "command": command,
    }
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{'cuda' if cuda else 'cpu'}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")

    print(f"device: {env['device']} | torch {env['torch']} | compile={args.compile} packed={args.packed}")
    print(f"{'method':10s} {'cooplib img/s':>14s} {'s/50k epoch':>12s} {'warm-up s':>10s} {'reference img/s':>16s} {'s/50k epoch':>12s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['method']:10s} {r['cooplib_images_per_s']:14.1f} {r['cooplib_s_per_50k_epoch']:12.2f} {r['cooplib_warmup_epoch_s']:10.2f} "
              f"{r['reference_images_per_s']:16.1f} {r['reference_s_per_50k_epoch']:12.2f} {r['speedup']:7.2f}")
    print(f"written: {out}")
    return 0


def main_precisions(args, device, model: str, command: str) -> int:
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    if len(shape) != 3:
        raise SystemExit(f"--shape must be CxHxW, got {args.shape!r}")
    quick = args.quick
    shape = (shape[0], 8, 8) if quick and args.shape == "3x32x32" else shape
    batch = 16 if quick and args.batch == 128 else args.batch
    blocks = args.blocks or (2 if quick else 8)
    steps = args.steps or (1 if quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    method = args.methods[0] if args.methods != ["baseline", "one", "dml"] else "baseline"
    res = precision_arms(method, model, shape, args.classes, batch, blocks, steps, warmup, device, tuple(args.arms))
    config = RunConfig(model=model, device=str(device), progress=False, tensorboard=False)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else runtime.device_name(device),
        "cpu_bf16": runtime.cpu_bf16_supported() if device.type == "cpu" else None,
        "auto_resolves_to": runtime.resolve(config, device),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "bf16_dtype": "torch.autocast bfloat16",
        "blocks": blocks, "steps_per_block": steps, "warmup_steps": warmup, "quick": quick,
        "loadavg_start": res["loadavg_per_round"][0], "loadavg_end": res["loadavg_per_round"][-1],
        "loadavg_per_round": res["loadavg_per_round"], "command": command,
    }
    tag = f"{model}-{'x'.join(map(str, shape))}"
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{device.type}-precisions-{tag}{'-quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": res["rows"]}, indent=2) + "\n")
    print(f"device: {env['device']} | torch {env['torch']} | {method} {model} input {list(shape)} batch {batch} | "
          f"load {env['loadavg_start']} -> {env['loadavg_end']}")
    print(f"{'arm':10s} {'img/s':>9s} {'min':>9s} {'max':>9s} {'vs ' + args.arms[0]:>9s}")
    for r in res["rows"]:
        print(f"{r['arm']:10s} {r['images_per_s']:9.1f} {r['images_per_s_min']:9.1f} {r['images_per_s_max']:9.1f} "
              f"{r['speedup_vs_' + args.arms[0]]:9.2f}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
