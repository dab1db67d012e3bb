"""Training: config, trainer (AdamW, EMA, AMP, DDP, exact resume), checkpoints."""
