"""Where data, models, checkpoints, pretrained weights and students come from."""
