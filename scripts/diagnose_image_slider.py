"""Where the image-pair objective's signal is: per training timestep, how much of the denoising
target the pair's difference explains, on the base model, with no training.

For a pair (x0-, x0+) noised with the same noise e at step k of the training schedule, the paper's
loss regresses the slider at +s on x+_t and at -s on x-_t to e. To first order the slider's output
is linear in its scale, so its gradient is driven by the difference of the two residuals,
(e - eps(x+_t)) - (e - eps(x-_t)) = eps(x-_t) - eps(x+_t): the part shared by both images cancels
and the noise e drops out. What the slider does not see cancelled is each residual's own variance,
which is the denoising loss the base model cannot reduce. Per k this prints:

- `signal`: mean square of eps(x+_t) - eps(x-_t) per latent element (the size information);
- `residual`: mean square of e - eps(x+_t) (the unexplained denoising error, same units);
- `ratio`: signal / residual, the pair's share of the gradient's energy at that step;
- the pair's latent difference against the VAE posterior's standard deviation (once).

Usage: python scripts/diagnose_image_slider.py [--model builtin:shapes] [--folder_main datasets/shapes-size/symmetric]
       [--folders smaller,larger] [--draws 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--folder_main", default="datasets/shapes-size/symmetric")
    parser.add_argument("--folders", default="smaller,larger")
    parser.add_argument("--steps", type=int, default=50, help="the training schedule's step count (max_denoising_steps)")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per pair and step")
    parser.add_argument("--every", type=int, default=4, help="measure every n-th step")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from sliders.data import LatentSource, scan_pairs
    from sliders.families import family_of_pipe
    from sliders.models import Conditioning, load_pipeline, make_scheduler, model_input, predict_noise, training_timestep

    torch.manual_seed(0)
    pipe = load_pipeline(args.model, torch.float32, "cpu")
    family = family_of_pipe(pipe)
    unet = family.denoiser(pipe)
    low, high = args.folders.split(",")
    pairs = scan_pairs(args.folder_main, [low, high], [-1, 1], captions=True)
    latents = LatentSource(pairs, pipe.vae, 64)
    latents.prepare()
    n = len(pairs.stems)
    means = {f: torch.cat([latents._posterior(f, s)[0] for s in range(n)]) for f in (0, 1)}
    stds = {f: torch.cat([latents._posterior(f, s)[1] for s in range(n)]) for f in (0, 1)}
    scale = pipe.vae.config.scaling_factor
    x0 = {f: means[f] * scale for f in (0, 1)}
    diff = (x0[1] - x0[0]).pow(2).mean().item()
    posterior = (stds[0] * scale).pow(2).mean().item()
    tokenizers, encoders = family.text_encoders(pipe)
    table = family.encode_prompts(tokenizers, encoders, list(pairs.captions))
    ids = family.time_ids(64, 64)
    cond = Conditioning(
        torch.stack([table[c][0] for c in pairs.captions]),
        None if table[pairs.captions[0]][1] is None else torch.stack([table[c][1] for c in pairs.captions]),
        None if ids is None else ids.expand(n, -1),
    )
    scheduler = make_scheduler("ddim")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for k in range(1, args.steps, args.every):
        scheduler.set_timesteps(args.steps)
        noising = scheduler.timesteps[k]
        timestep = training_timestep(scheduler, k, args.steps)
        signal = residual = 0.0
        for _ in range(args.draws):
            noise = torch.randn(x0[0].shape, generator=generator)
            with torch.no_grad():
                eps = {f: predict_noise(unet, model_input(scheduler, scheduler.add_noise(x0[f], noise, noising.repeat(n)),
                                                          timestep), timestep, cond) for f in (0, 1)}
            signal += (eps[0] - eps[1]).pow(2).mean().item() / args.draws
            residual += (noise - eps[1]).pow(2).mean().item() / args.draws
        rows.append({"k": k, "timestep": int(timestep), "signal": signal, "residual": residual,
                     "ratio": signal / residual})
        print(f"k {k:2d}  t {int(timestep):3d}  signal {signal:.5f}  residual {residual:.5f}  ratio {signal / residual:.3f}",
              flush=True)
    print(f"pair difference (mean square, scaled latents) {diff:.4f}; posterior variance {posterior:.6f}; "
          f"ratio {diff / posterior:.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "pair_difference": diff, "posterior_variance": posterior,
                       "model": args.model, "folder_main": args.folder_main, "folders": args.folders}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
