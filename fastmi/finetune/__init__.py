"""Recoverability as a training objective: the loss, the Trainer, the fine-tuning run and its checks."""
