"""MRC volume I/O: arrays are ``[z, y, x]`` float32 (as mrcfile gives), writes are atomic."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mrcfile
import numpy as np

from .errors import InputError

__all__ = ["read_volume", "write_volume", "read_voxel_size", "atomic_path"]


def read_volume(path, voxel_size_angstrom: float | None = None, *, ndim: int = 3,
                what: str = "volume") -> tuple[np.ndarray, float]:
    """Read an MRC file as float32 ``[z, y, x]`` and its voxel size in Angstrom.

    ``voxel_size_angstrom`` overrides the header. Raises :class:`InputError` for a missing
    or unreadable file, a header without voxel size and no override, wrong dimensionality,
    or non-finite values.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found", p)
    try:
        with mrcfile.open(p, permissive=True, mode="r") as m:
            if m.data is None:
                raise InputError("not an MRC file (no readable header/data)", p)
            data = np.asarray(m.data, dtype=np.float32)
            header_vs = float(m.voxel_size.x)
    except InputError:
        raise
    except Exception as exc:  # mrcfile raises ValueError/OSError variants
        raise InputError(f"not a readable MRC file ({exc.__class__.__name__}: {exc})", p) from None
    if ndim == 3 and data.ndim == 2:
        data = data[None]
    if data.ndim != ndim:
        raise InputError(f"has {data.ndim} dimensions; expected a {ndim}D {what}", p)
    if voxel_size_angstrom is None:
        if not header_vs > 0:
            raise InputError("voxel size absent from header (0); give it with --voxel-size", p, "voxel size")
        voxel_size_angstrom = header_vs
    elif voxel_size_angstrom <= 0:
        raise InputError(f"voxel size {voxel_size_angstrom} must be > 0", p, "voxel size")
    if not np.all(np.isfinite(data)):
        raise InputError("contains NaN or Inf values; expected finite densities", p)
    return np.ascontiguousarray(data), float(voxel_size_angstrom)


def read_voxel_size(path) -> float:
    """Voxel size (Angstrom, x) from an MRC header without reading the data."""
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as m:
            return float(m.voxel_size.x)
    except Exception as exc:
        raise InputError(f"not a readable MRC file ({exc})", path) from None


def atomic_path(path) -> "_AtomicPath":
    """Context manager yielding a temporary sibling path, renamed onto ``path`` on success."""
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=".part", dir=self.final.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            # mkstemp creates 0600; give the finished file the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.final)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_volume(path, data: np.ndarray, voxel_size_angstrom: float, *, dtype=np.float32,
                 label: str = "tomomatch") -> Path:
    """Write ``data`` (``[z, y, x]``) as MRC with the voxel size in the header, atomically.

    The header carries one fixed ``label`` instead of mrcfile's time-stamped one, so the same
    data always give byte-identical files.
    """
    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(data), dtype=dtype)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            m.voxel_size = float(voxel_size_angstrom)
            m.header.label[0] = label.encode("ascii", "replace")[:80]
            m.header.nlabl = 1
    return path
