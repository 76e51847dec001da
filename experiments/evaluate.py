"""Reruns a finished run's final evaluation on its checkpoint, without training (any run of research.train).

Run:
  python -m experiments.evaluate --workdir=/tmp/vae
  python -m experiments.evaluate --workdir=/tmp/vae --config.eval_k=500

Reads the experiment that wrote --workdir (its `.experiment` mark) and the run's config (its
results.json), restores the newest checkpoint and evaluates it as the run's final evaluation
did: the metrics are printed and written to DIR/evaluation/results.json (or --outdir), with the
samples the evaluation draws. With the run's config and seed they equal the run's results.json
figures. The experiment's sampling and evaluation fields (its SAMPLING_FIELDS) may be changed
with --config.<field>=VALUE; a field that shapes training is refused with one line.

Flags: --workdir=DIR (a finished run), --outdir=DIR, --seed=S (the evaluation keys' seed;
default: the run's), --config.<evaluation field>=VALUE.
"""

from experiments import reuse

if __name__ == "__main__":
  reuse.main("evaluate", __doc__)
