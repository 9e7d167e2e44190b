"""Loop: the one training loop (Trainer, fit), its position, LR schedule, elastic mode, model.fit."""
