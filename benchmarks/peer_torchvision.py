"""Peer check of ``alexnet import torchvision`` against torchvision itself (outside CI).

    PYTHONPATH=src python benchmarks/peer_torchvision.py [--venv /tmp/tv] [--images 8]

1. Builds (once) a virtual environment with torch==2.14.1 and torchvision==0.29.1 from
   the package index pip is configured with (CUDA builds; they run on the CPU).
2. In that environment: ``torchvision.models.alexnet()`` with ``torch.manual_seed(0)``
   (random initialisation: the IMAGENET1K_V1 file cannot be downloaded here, and the
   layout, not the values, is what the importer maps), its ``state_dict`` saved with
   ``torch.save``, and its forward logits on real ILSVRC-2012 JPEGs preprocessed by
   torchvision's own ``AlexNet_Weights.IMAGENET1K_V1.transforms()`` (PIL resize of the
   short side to 256, bilinear antialiased; centre 224; mean/std).
3. Here: ``alexnet import torchvision`` on that file (the real CLI), then our logits
   (a) on torchvision's own input tensors (the weights and the network: must agree to
   float32 rounding, ~1e-5) and (b) end to end from the JPEG files through our
   preprocessing (our decoder resizes with torch's antialiased bilinear kernel on the
   central square, so the inputs differ slightly; reported as measured).

Prints a JSON summary; needs ../shared/data/imagenet-sample-500.tar.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alexnet import locations
from alexnet.weights import create_model

TORCH, TORCHVISION = "2.14.1", "0.29.1"

CHILD = r'''
import json, sys
import numpy as np, torch, torchvision
from PIL import Image
from torchvision.models import AlexNet_Weights, alexnet
out, images = sys.argv[1], sys.argv[2:]
torch.manual_seed(0)
model = alexnet().eval()
torch.save(model.state_dict(), out + "/torchvision_alexnet.pth")
transform = AlexNet_Weights.IMAGENET1K_V1.transforms()
x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
with torch.no_grad():
    logits = model(x)
np.save(out + "/inputs.npy", x.numpy())
np.save(out + "/logits.npy", logits.numpy())
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "transform": repr(transform)}))
'''


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import torch, torchvision; assert torch.__version__.startswith('{TORCH}') "
                                f"and torchvision.__version__.startswith('{TORCHVISION}')"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    start = time.time()
    subprocess.run([sys.executable if not Path("/usr/bin/python3").is_file() else "/usr/bin/python3",
                    "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={TORCH}", f"torchvision=={TORCHVISION}",
                    "pillow", "numpy"], check=True)
    print(f"venv {venv} built in {time.time() - start:.0f} s", file=sys.stderr)
    return python


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default="/tmp/tv", type=Path)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        with tarfile.open(locations.shared_dir() / "data" / "imagenet-sample-500.tar") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")),
                             key=lambda m: m.name)
            for m in members[:: max(1, len(members) // args.images)][: args.images]:
                path = tmp / Path(m.name).name
                path.write_bytes(tar.extractfile(m).read())
                paths.append(path)
        child = subprocess.run([str(python), "-c", CHILD, str(tmp), *map(str, paths)], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
        if child.returncode != 0:
            raise SystemExit(f"torchvision side failed:\n{child.stderr}")
        versions = json.loads(child.stdout.strip().splitlines()[-1])
        ckpt = tmp / "imported.safetensors"
        subprocess.run([sys.executable, "-m", "alexnet", "import", "torchvision", str(tmp / "torchvision_alexnet.pth"),
                        "-o", str(ckpt)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(repo / "src")})
        theirs_x = torch.from_numpy(np.load(tmp / "inputs.npy"))
        theirs = torch.from_numpy(np.load(tmp / "logits.npy"))
        model = create_model(weights=ckpt)
        preprocess = model.preprocess
        with torch.no_grad():
            same_input = model(theirs_x)
            ours_x = preprocess(paths)
            end_to_end = model(ours_x)
        scale = float(theirs.std())
        result = {
            **versions, "images": [p.name for p in paths], "date": time.strftime("%Y-%m-%d"),
            "logit_std": scale,
            "same_input_max_abs_diff": float((same_input - theirs).abs().max()),
            "end_to_end_input_max_abs_diff": float((ours_x - theirs_x).abs().max()),
            "end_to_end_input_mean_abs_diff": float((ours_x - theirs_x).abs().mean()),
            "end_to_end_logit_max_abs_diff": float((end_to_end - theirs).abs().max()),
            "end_to_end_logit_max_abs_diff_relative_to_std": float((end_to_end - theirs).abs().max()) / scale,
            "end_to_end_top1_agree": int((end_to_end.argmax(1) == theirs.argmax(1)).sum()),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
