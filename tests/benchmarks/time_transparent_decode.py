"""Time TransparentDecoder.decode on CPU with the real-size architecture and random weights.

Run from the repository root: ``python3 tests/benchmarks/time_transparent_decode.py [--size 1024]``.
Not collected by pytest (no ``test_`` prefix). Weights are random but explicitly
initialised so activations stay finite; speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from layerfusion_core.models.transparent_vae import TransparentDecoder, estimate_memory_bytes

logger = logging.getLogger("time_transparent_decode")


def random_decoder(dtype: torch.dtype) -> TransparentDecoder:
    """Real-size decoder with variance-preserving conv/linear weights, unit norms, zero biases."""
    torch.manual_seed(0)
    model = TransparentDecoder()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    with torch.no_grad():
        model.conv_out.bias.fill_(0.5)
    return model.to(dtype).eval().requires_grad_(False)


def time_decode(model: TransparentDecoder, size: int, tta: bool, repeats: int) -> tuple[float, int]:
    """Median seconds of ``repeats`` decodes of one size x size image, and the passes per decode."""
    gen = torch.Generator().manual_seed(1)
    pixel = torch.rand(1, 3, size, size, generator=gen)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=gen)
    passes: list[int] = []
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.decode(pixel, latent, tta=tta, progress=lambda done, total: passes.append(total))
        times.append(time.perf_counter() - start)
        if not torch.isfinite(out).all():
            raise RuntimeError("decode produced non-finite values")
    return statistics.median(times), passes[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="repeats for tta=False (tta=True runs once)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = random_decoder(torch.float32)
    # Warm-up at the timed size: the first pass at a new shape also builds oneDNN kernels.
    time_decode(model, args.size, tta=False, repeats=1)
    est = estimate_memory_bytes(args.size, args.size, 1, torch.float32) / 2**20
    logger.info(
        "torch %s, %d CPU threads, fp32, batch 1, %dx%d, working-memory estimate %.0f MiB",
        torch.__version__,
        torch.get_num_threads(),
        args.size,
        args.size,
        est,
    )
    logger.info("| tta   | passes | seconds | s/pass |")
    logger.info("|-------|--------|---------|--------|")
    for tta, repeats in ((False, args.repeats), (True, 1)):
        seconds, passes = time_decode(model, args.size, tta, repeats)
        logger.info("| %-5s | %6d | %7.1f | %6.1f |", tta, passes, seconds, seconds / passes)


if __name__ == "__main__":
    main()
