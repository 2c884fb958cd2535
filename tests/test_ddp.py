"""DistributedDataParallel on CPU: two gloo processes under torchrun end with identical weights."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

# Each rank trains, then writes a hash of its own final state dict (rank 0 alone writes the run).
WORKER = """
import hashlib, os, sys
from cnnzoo.train import TrainConfig, Trainer

out = sys.argv[1]
trainer = Trainer(TrainConfig(
    model="lenet5", dataset="digits", epochs=2, batch_size=32, lr=3e-3, augment="none",
    output_dir=os.path.join(out, "run"), quiet=True, tensorboard=False, plots=False,
))
trainer.fit()
digest = hashlib.sha256()
for name, tensor in sorted(trainer.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().numpy().tobytes())
with open(os.path.join(out, f"rank{os.environ['RANK']}.sha256"), "w") as fh:
    fh.write(digest.hexdigest())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_cpu_processes_train_in_lockstep(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(tmp_path / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    # One log (rank 0), one run; the epoch line is printed once, not per process.
    assert proc.stdout.count("epoch   2/2") == 1 and "x 2 processes" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    # Measured 0.891: each rank sees half of every epoch (effective batch 64).
    assert metrics["test_top1"] >= 0.8
