"""Learned optimizers and meta-training (see the metatrain issues)."""
