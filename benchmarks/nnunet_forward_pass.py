"""One forward pass of nnU-Net's default CT 3d_fullres network at its 128^3 patch, on the CPU.

Run::

    .venv/bin/python benchmarks/nnunet_forward_pass.py            # eager, fp32
    .venv/bin/python benchmarks/nnunet_forward_pass.py --mode compile
    .venv/bin/python benchmarks/nnunet_forward_pass.py --mode channels_last

Prints the seconds of each of ``--repeats`` passes and the process's peak
resident memory (``ru_maxrss``) after building the network and after the
passes. docs/benchmarks.md uses it to say how much of an nnU-Net run is the
network itself (``benchmarks/nnunet_benchmark.py`` times the whole runs).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any


def peak_mib() -> float:
    """This process's peak resident memory so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_ct_network(num_classes: int) -> Any:
    """nnU-Net's default CT 3d_fullres network (``PlainConvUNet``: 6 stages, 32-320
    features, 3^3 kernels, instance norm, leaky ReLU, no deep supervision), untrained."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        input_channels=1,
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_conv_per_stage=[2] * 6,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2] * 5,
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["eager", "compile", "channels_last"], default="eager")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=4, help="output channels")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    net = default_ct_network(args.classes).eval()
    x = torch.randn(1, 1, 128, 128, 128)
    if args.mode == "channels_last":
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    print(f"network built: peak {peak_mib():.0f} MiB; mode {args.mode}, {args.threads} threads")
    with torch.inference_mode():
        model = torch.compile(net) if args.mode == "compile" else net
        for i in range(args.repeats):
            t0 = time.perf_counter()
            model(x)
            print(f"pass {i}: {time.perf_counter() - t0:.2f} s")
    print(f"after the passes: peak {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
