"""The published graph hypernetworks (ppuda's GHN-2, the ghn3 releases): their files, read safely.

::

    from wsl.hyper.published import read_checkpoint
    ckpt = read_checkpoint("ghn3xlm16.pt")      # joblib pickle, torch.save dict: no code from the file runs
    ckpt.family, ckpt.config, ckpt.config_source  # "ghn3", {"hid": ..., "max_shape": ...}, "inferred"
    ckpt.state_dict                               # name -> tensor, as the reference names them
    write_converted(ckpt, "ghn3xlm16/")           # config.json + model.safetensors (wsl convert-hypernet)

See :mod:`.files` for the formats and what is refused, :mod:`.config` for how a missing configuration is
inferred from the keys.
"""

from __future__ import annotations

from pathlib import Path

from .config import infer_config, is_ghn2, stored_config
from .convert import is_converted, read_converted, write_converted
from .files import PublishedCheckpoint, read_raw
from .ghn2 import PublishedGHN2
from .ghn3 import PublishedGHN3
from .graph import PRIMITIVES, PublishedGraph
from .graph3 import ghn3_graph


def read_checkpoint(path: str | Path) -> PublishedCheckpoint:
    """Read a ppuda / ghn3 checkpoint (any of the three formats) and its configuration, or a directory written
    by :func:`write_converted` (``wsl convert-hypernet``)."""
    path = Path(path)
    if path.is_dir():
        return read_converted(path)
    fmt, state, cfg, meta = read_raw(path)
    if cfg is None:
        cfg, source = infer_config(state, source=str(path)), "inferred"
    else:
        cfg, source = stored_config(cfg, state, source=str(path)), "file"
    return PublishedCheckpoint(path=path, format=fmt, state_dict=state, config=cfg, config_source=source,
                               is_ghn2=cfg["is_ghn2"], metadata=meta)


__all__ = ["PRIMITIVES", "PublishedCheckpoint", "PublishedGHN2", "PublishedGHN3", "PublishedGraph", "ghn3_graph",
           "infer_config", "is_converted", "is_ghn2", "read_checkpoint", "read_converted", "stored_config",
           "write_converted"]
