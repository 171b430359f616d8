"""Sampling a 64³ volume slice-batched: medm2g ``sample()`` vs a bare diffusers DDIM loop.

Same UNet, same DDIM scheduler (10 trailing steps), same initial noise, x0 clipping off in both (medm2g
clips x0 before the scheduler derives ε from it, diffusers' DDIM after, so only unclipped runs agree
to the last bit — checked first); every slice of the volume
is one sample conditioned on the matching source slice. Prints slices/s for each batch size and the
time ratio (target ≤ 1.05).

    .venv/bin/python benchmarks/bench_sampling.py [--depth 64] [--size 64] [--steps 10] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from diffusers import DDIMScheduler

    from medm2g_core.flows.config import FlowConfig
    from medm2g_core.models.conditioning import (ConditionInputs, SemanticSource, SharedCrossAttention,
                                                 SharedCrossAttentionConfig)
    from medm2g_core.models.denoisers import ImageDenoiser, ImageDenoiserConfig
    from medm2g_core.sampling.sample import make_sampling_scheduler, sample

    flow = FlowConfig.demo_cpu(sampling_steps=args.steps)
    torch.manual_seed(0)
    shared = SharedCrossAttention(SharedCrossAttentionConfig(num_layers=4, query_dim=64, condition_dim=64))
    denoiser = ImageDenoiser(ImageDenoiserConfig(sample_size=args.size, spatial_channels=(1,)), shared=shared).eval().to(device)
    unet = denoiser.unet  # the bare loop calls the very same UNet directly
    scheduler = make_sampling_scheduler(flow)
    bare_scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                   timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)

    volume = torch.rand(args.depth, 1, args.size, args.size, device=device) * 2 - 1  # slices of the source volume
    tokens = torch.randn(args.depth, 4, 64, device=device)

    def ours(chunk: slice, seed: int) -> torch.Tensor:
        inputs = ConditionInputs(semantic=[SemanticSource(tokens[chunk])], spatial=[volume[chunk]])
        count = volume[chunk].shape[0]
        return sample(denoiser, scheduler, (count, 1, args.size, args.size), condition=inputs, steps=args.steps,
                      generator=torch.Generator(device).manual_seed(seed), prediction_type="sample", device=device,
                      clip_sample=False)

    @torch.no_grad()
    def bare(chunk: slice, seed: int) -> torch.Tensor:
        source, condition = volume[chunk], tokens[chunk]
        count = source.shape[0]
        null = denoiser.null_token.expand(count, -1, -1)
        hidden = torch.cat([null, condition], 1)
        pooled = condition.mean(1)
        presence = torch.ones(count, 1, args.size, args.size, device=device)
        bare_scheduler.set_timesteps(args.steps, device=device)
        latents = torch.randn((count, 1, args.size, args.size), generator=torch.Generator(device).manual_seed(seed), device=device)
        for t in bare_scheduler.timesteps:
            model_output = unet(torch.cat([latents, source, presence], 1), t, encoder_hidden_states=hidden,
                                class_labels=pooled).sample
            latents = bare_scheduler.step(model_output, t, latents).prev_sample
        return latents

    def whole_volume(function, batch: int) -> float:
        start = time.perf_counter()
        for first in range(0, args.depth, batch):
            function(slice(first, first + batch), first)
        return time.perf_counter() - start

    first = slice(0, min(2, args.depth))
    torch.testing.assert_close(ours(first, 0), bare(first, 0), atol=1e-4, rtol=1e-4)  # same maths
    print(f"sampling a {args.depth}x{args.size}x{args.size} volume slice-batched, DDIM {args.steps} trailing steps, "
          f"{args.threads} thread(s), device {device}")
    for batch in [int(b) for b in args.batches.split(",")]:
        whole_volume(ours, batch)  # warm-up at this batch shape
        whole_volume(bare, batch)
        times_ours, times_bare = [], []
        for _ in range(2):
            times_ours.append(whole_volume(ours, batch))
            times_bare.append(whole_volume(bare, batch))
        ours_s, bare_s = min(times_ours), min(times_bare)
        print(f"  batch {batch:3d}: medm2g {args.depth / ours_s:7.1f} slices/s ({ours_s:6.2f} s)   "
              f"bare {args.depth / bare_s:7.1f} slices/s ({bare_s:6.2f} s)   ratio {ours_s / bare_s:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
