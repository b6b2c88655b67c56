"""Refusal behavior: what the model does, not what the data label says.

score.py     refusal score (log-odds of refusal tokens at the first response position)
generate.py  batched greedy generation on chat-formatted, left-padded prompts
judge.py     refusal judges (substring list, local sequence classifier) built from ``behavior.judge``
rates.py     refusal rate and mean score per category x label with bootstrap / Wilson CIs (``Bootstrap``: the CI
             settings of every refusal measurement)
measure.py   measure: generate, judge, summarize (train's baseline, evaluate, the organism card)
baseline.py  measure_baseline: measure on one split (the train run record writes it to behavior/)
config.py    the schemas of the ``behavior`` group and its ``judge`` subgroup
"""
