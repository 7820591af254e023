"""The compact trainer: shard -> batch loading, SFT and top-k KD losses, a transformers Trainer subclass."""
