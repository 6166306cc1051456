"""Seconds per training step of the hn-oar recipes on this machine, against nnU-Net's.

Run::

    .venv/bin/python benchmarks/training_step_benchmark.py [--threads 2] [--repeats 3]

One step is what ``training.trainer`` does per batch, on random data: the
forward pass of ``inference.unet.UNet3D`` with the config's architecture,
patch and batch size, a cross-entropy loss, the backward pass and an AdamW
update, in fp32 (bf16 autocast where ``inference.precision`` says the CPU runs
it natively). The configs are ``training/configs/hn-oar-stage2.yaml`` (how
hn-oar 1.1.0 was trained), ``hn-oar-2.0.yaml`` (the CPU continuation) and
``hn-oar-2.0-gpu.yaml`` (the GPU recipe). The named peer is one step of
nnU-Net's own recipe: its default CT 3d_fullres ``PlainConvUNet`` (32-320
features, 6 stages, deep supervision off) at a 128^3 patch, batch 2, SGD.

It prints the median seconds per step of ``--repeats`` steps (after one
warm-up step) and what that makes of the step counts that matter: 7,900 steps
(hn-oar 1.1.0's two stages) and 250,000 (nnU-Net's 1,000 epochs of 250).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS = ("hn-oar-stage2.yaml", "hn-oar-2.0.yaml", "hn-oar-2.0-gpu.yaml")
STEP_COUNTS = {"hn-oar 1.1.0 (7,900 steps)": 7_900, "nnU-Net (250,000 steps)": 250_000}


def time_steps(step: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``step`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def contourd_step(config_path: Path, autocast: bool) -> tuple[str, Callable[[], None]]:
    import torch

    from inference.unet import UNet3D
    from training.config import load_training_config

    config = load_training_config(config_path)
    arch = config.architecture()
    net = UNet3D(arch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(config.batch_size, 1, *config.patch_size)
    y = torch.randint(0, arch.num_classes, (config.batch_size, *config.patch_size))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    label = (
        f"contourd {config_path.name}: {arch.base_channels} base channels, {arch.levels} levels, "
        f"patch {'x'.join(map(str, config.patch_size))}, batch {config.batch_size}"
    )
    return label, step


def nnunet_step() -> tuple[str, Callable[[], None]]:
    import torch
    from nnunet_forward_pass import default_ct_network

    net = default_ct_network(num_classes=8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(2, 1, 128, 128, 128)
    y = torch.randint(0, 8, (2, 128, 128, 128))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return "peer: nnU-Net 3d_fullres PlainConvUNet 32-320, patch 128^3, batch 2", step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    import torch

    from inference.precision import resolve_precision

    torch.set_num_threads(args.threads)
    autocast = resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    print(f"{args.threads} threads, {'bf16 autocast' if autocast else 'fp32'}")
    steps = [contourd_step(REPO / "training" / "configs" / name, autocast) for name in CONFIGS]
    if not args.skip_peer:
        steps.append(nnunet_step())
    for label, step in steps:
        seconds = time_steps(step, args.repeats)
        hours = ", ".join(f"{name}: {n * seconds / 3600:.1f} h" for name, n in STEP_COUNTS.items())
        print(
            f"{label}\n  {seconds:.2f} s/step ({3600 / seconds:.0f} steps/h); {hours}", flush=True
        )


if __name__ == "__main__":
    main()
