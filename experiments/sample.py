"""Samples a finished run again from its checkpoint, without training (any run of research.train).

Run:
  python -m experiments.sample --workdir=/tmp/diffusion
  python -m experiments.sample --workdir=/tmp/diffusion --config.guidance_scale=3 --config.sample_steps=100
  python -m experiments.sample --workdir=/tmp/gan_digits --num_samples=100 --seed=7
  python -m experiments.sample --workdir=/tmp/gpt2 --config.temperature=1.0 --config.top_k=40

Reads the experiment that wrote --workdir (its `.experiment` mark) and the run's config (its
results.json), restores the newest checkpoint (the EMA weights where the run keeps them) and
writes what the run's final evaluation writes (samples.png, samples.npz or samples.txt, the
figures in results.json) into DIR/samples/, or --outdir. With no overrides and no --seed the
samples equal the run's own. Only the experiment's sampling fields may change (its
SAMPLING_FIELDS: for diffusion the sampler, sample_steps, eta, tau, variance, clip_sample,
guidance_scale, num_samples and sample_batch; for GPT-2 the prompts, sample_tokens,
temperature and top_k); a field that shapes training is refused with one line.

Flags: --workdir=DIR (a finished run), --outdir=DIR, --seed=S (the sample keys' seed; default:
the run's), --num_samples=N, --config.<sampling field>=VALUE.
"""

from experiments import reuse

if __name__ == "__main__":
  reuse.main("sample", __doc__)
