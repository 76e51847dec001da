"""Each family's plug-in for the training loop: the only place where models meet research.train.

    from research import tasks
    task = tasks.FAMILIES["gan"].make_task(config)      # a research.train.Task
    run = research.train.train(task, config, workdir, data)

One module per family, each exposing its `make_task`-style functions (`make_pretrain_task` and
`make_classifier_task` for BERT; `make_sft_task`, `make_reward_task`, `make_ppo_task` and
`make_dpo_task` for RLHF's stages). FAMILIES has the keys of research.models.FAMILIES: the
"diffusion" and "dit" families share research.tasks.diffusion, whose `config.model` picks the
U-Net or the DiT; "gpt2" and "lstm" share research.tasks.gpt2, whose `config.model` picks the GPT
or the LSTM. research.tasks.rlhf is a task module outside FAMILIES (import it by name): its stages
start from the parameters an earlier stage trained, not from a config alone, and it brings in
research.rl, which the other families do not need (see research.models).
"""

from research.tasks import autoencoder, bert, classifier, diffusion, gan, gpt2, seq2seq, stylegan

# Family name -> its task module (the keys of research.models.FAMILIES).
FAMILIES = {"autoencoder": autoencoder, "gan": gan, "diffusion": diffusion, "dit": diffusion, "gpt2": gpt2,
            "lstm": gpt2, "bert": bert, "classifier": classifier, "seq2seq": seq2seq, "stylegan": stylegan}

__all__ = ["FAMILIES", "autoencoder", "bert", "classifier", "diffusion", "gan", "gpt2", "seq2seq", "stylegan"]
