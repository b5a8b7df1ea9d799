"""Training: the trainer loop, checkpoints and run logging."""
from gencls.training.checkpoint import load_checkpoint, save_checkpoint
from gencls.training.trainer import train

__all__ = ["load_checkpoint", "save_checkpoint", "train"]
