"""Prompt banks (one soft prompt per task, Lester et al.'s multi-task
serving) and prompt ensembles (N prompts for one task, predictions
averaged): `method.PromptBank` trains the bank, `rows` puts each row's
prompt slots into a batch, `ensemble` expands and averages."""

from prompt_jax.methods.prompt_bank.method import PromptBank
