"""PNG grids of (de-normalized) images for looking at synthetic samples."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch

from ..models.spec import InputSpec


def save_grid(x: torch.Tensor, spec: InputSpec, path: str | os.PathLike, labels: Optional[torch.Tensor] = None,
              max_images: int = 100, scale: int = 0) -> None:
    """Write up to `max_images` normalized inputs as a PNG grid (sorted by label when given)."""
    from PIL import Image

    if labels is not None:
        order = torch.argsort(labels[: len(x)], stable=True)
        x = x[order]
    x = x[:max_images]
    img = spec.denormalize(x.detach().float().cpu()).clamp(0, 1)
    n, c, h, w = img.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    arr = img.permute(0, 2, 3, 1).numpy()
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = arr[i][..., :3]
    scale = scale or max(1, 256 // max(h, w))
    im = Image.fromarray((canvas * 255).round().astype(np.uint8))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)
