"""The three layers of descript-audio-codec that the official VAE uses (on its path: real)."""
import torch
from torch import nn
from torch.nn.utils import weight_norm


def WNConv1d(*args, **kwargs) -> nn.Module:
  return weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.Module:
  return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class Snake1d(nn.Module):
  """Snake activation x + sin(alpha x)^2 / alpha per channel; input (B, C, T)."""

  def __init__(self, channels: int):
    super().__init__()
    self.alpha = nn.Parameter(torch.ones(1, channels, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + torch.sin(self.alpha * x).pow(2) / (self.alpha + 1e-9)
