"""Full fine-tuning: every backbone weight is the trainable tree."""

from prompt_jax.methods.full_finetune.method import FullFinetune
