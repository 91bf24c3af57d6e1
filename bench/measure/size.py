"""Size of the deployable model: its state_dict saved with safetensors, bytes on disk.

safetensors stores raw tensor bytes plus a small JSON header and no pickled
code, so the figure is what a deployment would ship. Tensors that share
storage (tied weights) are written once, as ``safetensors.torch.save_model``
does.
"""

from __future__ import annotations

import os
import tempfile

from torch import nn


def safetensors_bytes(model: nn.Module) -> int:
    """Bytes on disk of ``model``'s state_dict (parameters and buffers) as one .safetensors."""
    from safetensors.torch import save_model

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_model(model, path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the unique tensors in the state_dict (what safetensors adds a header to)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
