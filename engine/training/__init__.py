"""Training: the one loop (fine-tuning and pretraining), the prior's stages and its architecture."""
