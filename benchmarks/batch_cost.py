"""What a training step costs against its batch size, per method, on one model (default: the shipped one).

On a small model a step's cost is mostly fixed overhead (module calls, the optimizer), so more clips per
step are nearly free: this measures the median seconds per optimizer step (forward, backward, AdamW) for
each method at each batch size, on random latents of the model's native clip size.

    python benchmarks/batch_cost.py --batch-sizes 1,4,8,16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from motiontune.app.api import open_backbone
from motiontune.errors import MotiontuneError
from motiontune.methods import create_method
from motiontune.settings import ModelDefaults

METHODS = ("newmove", "motion-inversion", "motionmatcher", "motiondirector")


def step_seconds(model: str | None, method_name: str, batch: int, steps: int) -> float:
    """Median wall seconds of `steps` optimizer steps (after 2 untimed ones) of a fresh method."""
    backbone = open_backbone(model)
    native = ModelDefaults.read(backbone.path).native
    frames, height, width = (native.get(k, d) for k, d in (("frames", 8), ("height", 32), ("width", 32)))
    h, w = backbone.latent_size(height, width)
    shape = (backbone.latent_channels, backbone.latent_frames(frames), h, w)
    method = create_method(method_name, backbone, {}, token="sks")
    method.bind_training_shape(torch.Size(shape))
    method.prepare_for_training()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-4)
    text = backbone.encode_prompt(["a red circle doing sks on a white background"] * batch)
    generator = torch.Generator().manual_seed(0)
    batch_data = {"latents": torch.randn(batch, *shape, generator=generator), "text": text, "captions": ["x"] * batch}
    timings = []
    for index in range(steps + 2):
        started = time.perf_counter()
        method.loss(batch_data, generator).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ShapeWorld model)")
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="comma list of clips per step")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per cell")
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be a comma list of integers, got '{args.batch_sizes}'")
    if min(sizes) < 1 or args.steps < 1:
        parser.error("batch sizes and --steps must be at least 1")
    print(f"| method | {' | '.join(f'batch {size}: s / step (ms / clip)' for size in sizes)} |")
    print(f"| --- | {' | '.join('---' for _ in sizes)} |")
    try:
        for name in args.methods.split(","):
            cells = []
            for size in sizes:
                seconds = step_seconds(args.model, name, size, args.steps)
                cells.append(f"{seconds:.3f} ({1000 * seconds / size:.0f})")
            print(f"| {name} | {' | '.join(cells)} |", flush=True)
    except MotiontuneError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
