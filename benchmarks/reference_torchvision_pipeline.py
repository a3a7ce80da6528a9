"""The torchvision-style reference: what a user gets from torchvision's own pieces.

    python benchmarks/reference_torchvision_pipeline.py --data TREE --batch-size 256 --seconds 20 --json OUT.json

``torchvision.models.alexnet`` (the one-tower variant) trained with SGD on
``torchvision.datasets.ImageFolder`` (PIL decoding of the original JPEGs), the transforms
of torchvision's classification reference (``RandomResizedCrop(224)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) and a ``DataLoader`` with one worker
per CPU core, pinned memory, under autocast (bfloat16 by default; float16 adds the
gradient scaler, as torchvision's ``--amp`` does). The device check runs it on the same
images as our pipeline and reports the images per second of the whole loop, steady state
(the first ``--warmup`` steps excluded), and how much of that time the step waited for data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="an ImageFolder tree: DATA/<class>/*.JPEG")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--seconds", type=float, default=20.0, help="measure for about this long (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    args.warmup = max(1, args.warmup)        # the clock starts after a step

    import torchvision
    from torchvision import transforms

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    transform = transforms.Compose([
        transforms.RandomResizedCrop(args.crop), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    dataset = torchvision.datasets.ImageFolder(args.data, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    if len(loader) == 0:
        raise SystemExit(f"{args.data}: fewer images ({len(dataset)}) than one batch ({args.batch_size})")
    model = torchvision.models.alexnet(num_classes=1000).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps, images, waited = 0, 0, 0.0
    start = None
    done = False
    while not done:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            if start is not None:
                waited += time.perf_counter() - t0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            steps += 1
            if steps == args.warmup:
                sync()
                start = time.perf_counter()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            elif start is not None:
                images += len(y)
                if time.perf_counter() - start >= args.seconds:
                    done = True
                    break
    sync()
    elapsed = time.perf_counter() - start
    result = {"pipeline": "torchvision ImageFolder + PIL + DataLoader, torchvision.models.alexnet",
              "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers,
              "images": images, "seconds": elapsed, "img_per_s": images / elapsed,
              "data_wait_fraction": waited / elapsed, "dataset_images": len(dataset), "crop": args.crop,
              "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
              "loss": float(loss), "device": str(device), "torchvision": torchvision.__version__}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
