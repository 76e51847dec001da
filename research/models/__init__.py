"""Model families, one per module: modules, losses and samplers, with nothing of the training loop.

    from research import models
    pair = models.FAMILIES["gan"].make_models(config)   # research.models.gan: the generator and the critic

FAMILIES maps each family the loop trains to its model module; research.tasks.FAMILIES maps the
same names to the plug-ins that hand those models to the loop. "dit" is the DiT denoiser of the
diffusion process in research/models/diffusion.py (the U-Net's family is "diffusion"); "lstm" is
the LSTM language model, trained by the GPT's plug-in (research/tasks/gpt2.py, config.model). RLHF
is not a family of its own here: its models are GPT-2 with a reward or value head
(research/rl/rlhf.py), trained in stages by research/tasks/rlhf.py's plug-ins, each starting from an earlier stage's
parameters. `attention`, `layers` and `unet` are parts the families share. `autoencoder_kl`
(latent diffusion's KL autoencoder), `clip` and `cond_unet` (diffusers' text-conditioned U-Net)
are the stages of experiments/text_to_image.py, with weights both ways with transformers or
diffusers; they are not families of their own in FAMILIES. `style` (style transfer and DeepDream)
optimises images through a fixed feature network and trains nothing.
"""

from research.models import attention, layers, unet
from research.models import autoencoder_kl, clip, cond_unet
from research.models import autoencoder, bert, classifier, diffusion, dit, gan, gpt2, lstm, seq2seq, stylegan
from research.models import style

# Family name -> its model module.
FAMILIES = {"autoencoder": autoencoder, "gan": gan, "diffusion": diffusion, "dit": dit, "gpt2": gpt2, "lstm": lstm,
            "bert": bert, "classifier": classifier, "seq2seq": seq2seq, "stylegan": stylegan}

__all__ = ["FAMILIES", "attention", "autoencoder", "autoencoder_kl", "bert", "classifier", "clip", "cond_unet",
           "diffusion", "dit", "gan", "gpt2", "layers", "lstm", "seq2seq", "style", "stylegan", "unet"]
