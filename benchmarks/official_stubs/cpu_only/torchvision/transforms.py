"""The two torchvision transforms the official CLIP conditioner builds (real)."""
import torch


class Compose:

  def __init__(self, transforms):
    self.transforms = list(transforms)

  def __call__(self, x):
    for t in self.transforms:
      x = t(x)
    return x


class Normalize:
  """(x - mean) / std over the channel axis -3, as torchvision's tensor Normalize."""

  def __init__(self, mean, std):
    self.mean, self.std = mean, std

  def __call__(self, x: torch.Tensor) -> torch.Tensor:
    mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std
