"""Flow training step: medm2g (objective + ImageDenoiser + AdamW) vs a bare diffusers + Accelerate loop.

Same UNet config, batch and optimizer; the steps are interleaved so that machine load hits both
alike, and the median step time of each is compared (target: ratio ≤ 1.10). Also prints peak RSS.

    .venv/bin/python benchmarks/bench_train_step.py [--batch 8] [--size 64] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from medm2g_core.flows.config import FlowConfig
    from medm2g_core.flows.objective import (add_noise, diffusion_loss, make_noise_scheduler, sample_keep_mask,
                                             sample_timesteps, training_target)
    from medm2g_core.models.conditioning import (ConditionInputs, SemanticSource, SharedCrossAttention,
                                                 SharedCrossAttentionConfig, assemble_condition)
    from medm2g_core.models.denoisers import ImageDenoiser, ImageDenoiserConfig, build_image_unet

    flow = FlowConfig.demo_cpu(prediction_type="epsilon", source_dropout=0.1)
    config = ImageDenoiserConfig(sample_size=args.size, spatial_channels=(1,))
    torch.manual_seed(0)
    shared = SharedCrossAttention(SharedCrossAttentionConfig(num_layers=4, query_dim=64, condition_dim=64))
    denoiser = ImageDenoiser(config, shared=shared).to(device)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    alphas_cumprod = make_noise_scheduler(flow).alphas_cumprod

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=device.type == "cpu")
    bare_unet = build_image_unet(config)
    bare_optimizer = torch.optim.AdamW(bare_unet.parameters(), lr=1e-4)
    bare_unet, bare_optimizer = accelerator.prepare(bare_unet, bare_optimizer)
    bare_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    B, S = args.batch, args.size
    target = torch.rand(B, 1, S, S, device=device) * 2 - 1
    source = torch.rand(B, 1, S, S, device=device) * 2 - 1
    tokens = torch.randn(B, 4, 64, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def medm2g_step() -> float:
        inputs = ConditionInputs(semantic=[SemanticSource(tokens)], spatial=[source])
        keep = sample_keep_mask(B, num_sources=2, source_dropout=flow.source_dropout,
                                condition_dropout=flow.condition_dropout, generator=generator, device=device)
        condition = assemble_condition(inputs, keep=keep)
        noise = torch.randn(target.shape, generator=generator, device=device)
        t = sample_timesteps(B, num_train_timesteps=flow.num_train_timesteps, generator=generator, device=device)
        prediction = denoiser(add_noise(target, noise, t, alphas_cumprod=alphas_cumprod), t, condition=condition)
        loss = diffusion_loss(prediction, training_target(target, noise, t, alphas_cumprod=alphas_cumprod,
                                                          prediction_type=flow.prediction_type))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)  # float() synchronises, so CUDA steps are timed whole

    def bare_step() -> float:
        noise = torch.randn(target.shape, generator=generator, device=device)
        t = torch.randint(0, 1000, (B,), generator=generator, device=device)
        noisy = bare_scheduler.add_noise(target, noise, t)
        sample = torch.cat([noisy, source, torch.ones(B, 1, S, S, device=device)], 1)
        prediction = bare_unet(sample, t, encoder_hidden_states=tokens, class_labels=tokens.mean(1)).sample
        loss = F.mse_loss(prediction, noise)
        bare_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        bare_optimizer.step()
        return float(loss)  # float() synchronises, so CUDA steps are timed whole

    for _ in range(3):  # warm-up
        medm2g_step()
        bare_step()
    ours, theirs = [], []
    for _ in range(args.steps):
        start = time.perf_counter(); medm2g_step(); ours.append(time.perf_counter() - start)
        start = time.perf_counter(); bare_step(); theirs.append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parameters = sum(p.numel() for p in denoiser.parameters())
    print(f"flow training step, batch {B}, {S}x{S}, {args.threads} thread(s), device {device}, UNet {config.block_out_channels} "
          f"({parameters / 1e6:.2f} M parameters, {denoiser.cross_attention_points} shared cross-attention point(s))")
    print(f"  medm2g  median {ours_s * 1000:8.1f} ms/step")
    print(f"  bare    median {theirs_s * 1000:8.1f} ms/step  (diffusers UNet + DDPMScheduler + Accelerate)")
    print(f"  ratio   {ours_s / theirs_s:.3f}  (target <= 1.10)")
    print(f"  peak RSS of this process (both models) {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
