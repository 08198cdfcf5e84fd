"""How far our frame resize (`axturbo.data.video_io.resize_frames`, PIL bilinear) is from the
official reader's (torchvision `Resize((224, 224))` on uint8 tensors = torch's antialiased
bilinear `interpolate`), on synthetic frames of common sizes. Needs torch (CPU).

  python -m benchmarks.resize_vs_torch
"""
import numpy as np


def _frame(rng, h: int, w: int) -> np.ndarray:
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(11 * x * y)], -1)
  return np.clip(base * 100 + 128 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def main():
  import torch
  from axturbo.data import video_io
  rng = np.random.default_rng(0)
  print('source size | ours vs torch uint8 path: max step, pixels differing | '
        'torch float path (rounded) vs uint8 path: max step, pixels differing')
  for h, w in ((360, 640), (720, 1280), (240, 320), (300, 500), (112, 112)):
    f = _frame(rng, h, w)
    ours = video_io.resize_frames(f[None], 224)[0].astype(int)
    t = torch.from_numpy(f).permute(2, 0, 1)[None]
    kw = dict(size=(224, 224), mode='bilinear', antialias=True, align_corners=False)
    u8 = torch.nn.functional.interpolate(t, **kw)[0].permute(1, 2, 0).numpy().astype(int)
    fl = torch.nn.functional.interpolate(t.float(), **kw).round().clamp(0, 255)
    fl = fl[0].permute(1, 2, 0).numpy().astype(int)
    print(f'{h}x{w} | {np.abs(ours - u8).max()}, {(ours != u8).mean():.2%} | '
          f'{np.abs(fl - u8).max()}, {(fl != u8).mean():.2%}')


if __name__ == '__main__':
  main()
