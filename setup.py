"""Installs the `research` package (and `experiments`, runnable with `python -m`)."""

import setuptools

# Lower bounds: the oldest releases the code is written against. Upper bounds: the next major
# release (for 0.x libraries, the next minor, which they use for breaking changes), so that an
# install a year from now still resolves to releases this code runs on; raise them after the
# suite passes on the newer release.
INSTALL_REQUIRES = [
    "jax>=0.4.35,<0.11",
    "flax>=0.10,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.7,<5",
    "tensorflow-cpu>=2.18,<3",  # TFDS encodes and reads records with it
    "importlib_resources",  # needed by TFDS builders defined outside its package
    "tensorboard<3",  # TensorBoard event files (research/train/tensorboard.py), written without TensorFlow
    "absl-py>=1.4,<3",
    "ml-collections>=0.1.1,<2",
    "numpy>=1.26,<3",
    # jax's and TensorFlow's low-precision dtypes. 0.7's extension takes about 1 s of CPU to load
    # (0.6's 0.3 s), paid by every process: every experiment, every test subprocess.
    "ml-dtypes>=0.5,<0.7",
    "scikit-learn>=1.3,<2",  # ships the bundled digits; reference for EM
    "pillow>=10,<14",
    "tokenizers>=0.19,<1",  # byte-level BPE for the language models
    "safetensors>=0.4,<1",  # GPT-2 / BERT weights to and from transformers' files, without torch
    "matplotlib>=3.7,<4",
    "gymnax>=1.0,<2",  # the 1.0 step signature; jittable classic-control environments for PPO
]

EXTRAS_REQUIRE = {
    # Reference implementations are only used to check ours: torch (the PPO and vs_torch
    # benchmarks' peers), transformers (GPT-2 logits, weights and generation), gymnasium
    # (environment dynamics). torch is pinned to a CPU build's version: an open range would
    # fetch a multi-GB CUDA build.
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "torch==2.13.0",
        "transformers>=5,<6",  # version 5's config fields and weight names
        "gymnasium>=1.0,<2",
        "diffusers>=0.30,<1",  # reference for the DDPM/DDIM scheduler parity tests
        "MinAtar>=1.0.15,<2",  # reference dynamics of gymnax's MinAtar games (its torch is an extra, not pulled)
        "stable-baselines3>=2.3,<3",  # the A2C benchmark's peer (its torch is the pin above)
        "sacrebleu>=2.0,<3",  # reference for research/metrics/bleu.py
        "num2words>=0.5.10,<0.6",  # an independent check of number_words' English words
    ],
    "cuda": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
}

setuptools.setup(
    name="research",
    version="0.1.0",
    description="Pure functional JAX/Flax research models with one training loop.",
    packages=setuptools.find_packages(include=["research", "research.*", "experiments", "experiments.*", "launch"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
