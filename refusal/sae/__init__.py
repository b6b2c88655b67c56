"""Sparse autoencoders: architectures (model), objective (loss), LightningModule (module), SAELens I/O (io)."""
from refusal.sae.config import SAEConfig
from refusal.sae.io import load_saelens, save_saelens
from refusal.sae.model import SparseAutoencoder
from refusal.sae.module import SAELightningModule

__all__ = ["SAEConfig", "SAELightningModule", "SparseAutoencoder", "load_saelens", "save_saelens"]
