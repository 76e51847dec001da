"""Evaluations that are not sample metrics: pass@k of generated code, run in a sandbox; few-shot prompting.

    from research.evals import code, codex, prompting
    code.pass_at_k(n=100, c=7, k=10)
    code.execute("assert sum([1, 2]) == 3")   # Result(status='passed', message='')
    prompting.score(model, params, tokenizer, "addition", k=4)["accuracy"]
    codex.sample(model, params, tokenizer, problems, n=100, temperature=0.8, key=key)   # function bodies
"""

from research.evals import code

# `prompting` and `codex` score GPTs (it imports jax and research.models): imported by name, never here, so that
# importing research.evals (the sandbox's side included) loads neither.
__all__ = ["code"]
