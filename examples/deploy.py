"""Chapter 11: a model behind the HTTP API (driven in-process, v1 and v2), an int8 copy checked
against float32, and an ONNX export checked against PyTorch, all from cnnzoo's shipped weights.

    python examples/deploy.py
    python examples/deploy.py --calibration 512 --check 2000 --out deployed
"""

import argparse
import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import torch
from PIL import Image

import cnnzoo
from cnnzoo.data import load_data
from cnnzoo.export import export_model
from cnnzoo.serve import create_app

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--calibration", type=int, default=256, help="int8 calibration images")
parser.add_argument("--check", type=int, default=1000, help="test images int8 is checked on")
parser.add_argument("--out", default="deployed")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

(x_train, _), (x_test, y_test) = load_data("fashion_mnist")
image = Image.fromarray(x_test[0])
png = io.BytesIO()
image.save(png, format="PNG")
prepared = cnnzoo.get_weight_spec("lenet5", "fashion_mnist").transforms()(image).unsqueeze(0)

# 1. serve: the same app as `cnnzoo serve lenet5:fashion_mnist`, without a network
app = create_app(["lenet5:fashion_mnist"], threads=1)


async def ask() -> tuple[dict, dict]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=transport, base_url="http://cnnzoo") as client:
        v1 = await client.post("/v1/models/lenet5/predict?topk=1",
                               files={"file": ("image.png", png.getvalue(), "image/png")})
        request = {"inputs": [{"name": "input", "datatype": "FP32",
                               "shape": list(prepared.shape),
                               "data": prepared.flatten().tolist()}],
                   "outputs": [{"name": "probabilities"}]}
        v2 = await client.post("/v2/models/lenet5/infer", json=request)
        return v1.raise_for_status().json(), v2.raise_for_status().json()


v1, v2 = asyncio.run(ask())
top = v1["predictions"][0]["topk"][0]
v2_probabilities = v2["outputs"][0]["data"]
print(f"served v1: {top['label']} {top['probability']:.4f}; "
      f"v2: class {int(np.argmax(v2_probabilities))} {max(v2_probabilities):.4f}")

# 2. int8: calibrated on training images, checked on test images
resnet = cnnzoo.create_model("resnet20", weights="fashion_mnist").eval()
mean, std = resnet.pretrained_cfg["mean"][0], resnet.pretrained_cfg["std"][0]


def normalised(pixels: np.ndarray) -> torch.Tensor:
    return ((torch.as_tensor(pixels).float() / 255 - mean) / std).unsqueeze(1)


int8 = cnnzoo.quantize(resnet, normalised(x_train[: args.calibration]),
                       validation=(normalised(x_test[: args.check]),
                                   torch.as_tensor(y_test[: args.check])))  # fmt: skip
print(int8.report)
int8.save(out / "resnet20.int8.onnx")

# 3. export: ONNX, run by ONNX Runtime alone
lenet = cnnzoo.create_model("lenet5", weights="fashion_mnist").eval()
onnx_file = out / "lenet5.onnx"
export_model(lenet, onnx_file, "onnx", torch.randn(2, *prepared.shape[1:]), overwrite=True)
session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
logits = session.run(None, {session.get_inputs()[0].name: prepared.numpy()})[0]
with torch.no_grad():
    difference = np.abs(logits - lenet(prepared).numpy()).max()
print(f"onnx: class {int(np.argmax(logits))}, largest difference from PyTorch {difference:.1e}")
print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} in {out}/")
