"""Installs the `research` package (and `experiments`, runnable with `python -m`)."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.35",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "tensorflow-datasets>=4.9.7",
    "tensorflow-cpu>=2.18",  # TFDS encodes and reads records with it
    "importlib_resources",  # needed by TFDS builders defined outside its package
    "tensorboard",  # TensorBoard event files (research/train/tensorboard.py), written without TensorFlow
    "absl-py",
    "ml-collections",
    "scikit-learn",  # ships the bundled digits; reference for EM
    "pillow",
    "tokenizers",  # byte-level BPE for the language models
    "safetensors",  # GPT-2 / BERT weights to and from transformers' files, without torch
    "matplotlib",
    "gymnax>=1.0",  # the 1.0 step signature; jittable classic-control environments for PPO
]

EXTRAS_REQUIRE = {
    # Reference implementations are only used to check ours: torch (the PPO and vs_torch
    # benchmarks' peers), transformers (GPT-2 logits, weights and generation), gymnasium
    # (environment dynamics).
    "test": [
        "pytest",
        "pytest-xdist",
        "torch==2.13.0",
        "transformers",
        "gymnasium",
        "diffusers",  # reference for the DDPM/DDIM scheduler parity tests
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
