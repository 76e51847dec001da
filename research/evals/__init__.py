"""Evaluations that are not sample metrics: pass@k of generated code, run in a sandbox.

    from research.evals import code
    code.pass_at_k(n=100, c=7, k=10)
    code.execute("assert sum([1, 2]) == 3")   # Result(status='passed', message='')
"""

from research.evals import code

__all__ = ["code"]
