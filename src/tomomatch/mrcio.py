"""MRC volume I/O: arrays are ``[z, y, x]`` float32 (as mrcfile gives), writes are atomic."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from .errors import InputError

__all__ = [
    "read_volume",
    "write_volume",
    "read_voxel_size",
    "check_voxel_size_agrees",
    "atomic_path",
    "check_volume_fits",
]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_volume(
    path,
    voxel_size_angstrom: float | None = None,
    *,
    ndim: int = 3,
    what: str = "volume",
    nonconstant: bool | None = None,
) -> tuple[np.ndarray, float]:
    """Read an MRC file as float32 ``[z, y, x]`` and its voxel size in Angstrom.

    ``voxel_size_angstrom`` overrides the header. Raises :class:`InputError` (one line) for a
    missing or unreadable file, a header whose mode and size do not match the data (mrcfile's
    warnings become the error, not lines printed before it), complex data, a header without
    voxel size and no override, wrong dimensionality, non-finite values, and, with
    ``nonconstant`` (default for a tomogram or a template), a volume without any variation.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found", p)
    if p.is_dir():
        raise InputError(f"is a folder; expected a {what} MRC file", p)
    check_volume_fits(p, what)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(p, permissive=True, mode="r") as m:
                if m.data is None:
                    raise InputError("not an MRC file (no readable header/data)", p)
                if np.iscomplexobj(m.data):
                    raise InputError(
                        f"holds complex numbers (MRC mode {int(m.header.mode)}); expected a real {what}", p, "mode"
                    )
                data = np.asarray(m.data, dtype=np.float32)
                header_vs = float(m.voxel_size.x)
        except InputError:
            raise
        except Exception as exc:  # mrcfile raises ValueError/OSError variants
            raise InputError(f"not a readable MRC file ({exc.__class__.__name__}: {_one_line(exc)})", p) from None
    problems = [
        _one_line(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "NaN" not in str(w.message)
    ]
    if problems:
        raise InputError(f"damaged MRC file: {'; '.join(problems)}", p, "header")
    if ndim == 3 and data.ndim == 2:
        data = data[None]
    if data.ndim != ndim:
        raise InputError(f"has {data.ndim} dimensions; expected a {ndim}D {what}", p)
    if voxel_size_angstrom is None:
        if not header_vs > 0:
            raise InputError(
                f"voxel size in the header is {header_vs:g}; expected > 0 A, or give it with --voxel-size",
                p,
                "voxel size",
            )
        voxel_size_angstrom = header_vs
    elif not float(voxel_size_angstrom) > 0:
        raise InputError(f"voxel size {float(voxel_size_angstrom):g} must be > 0", p, "voxel size")
    if not np.all(np.isfinite(data)):
        raise InputError("contains NaN or Inf values; expected finite densities", p)
    if nonconstant is None:
        nonconstant = what in ("tomogram", "template")
    if nonconstant and data.size and float(data.max()) == float(data.min()):
        raise InputError(f"every voxel is {float(data.flat[0]):g}; expected a {what} with some contrast", p)
    return np.ascontiguousarray(data), float(voxel_size_angstrom)


#: bytes per voxel of each MRC mode (mrcfile's modes; 101 is 4-bit)
_MODE_BYTES = {0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0, 4: 8.0, 6: 2.0, 12: 2.0, 101: 0.5}


def check_volume_fits(path, what: str = "volume") -> None:
    """Refuse an MRC file whose header claims more voxels than this machine's memory holds,
    from the header alone (:func:`tomomatch.resources.check_fits`), before any data are read.

    The estimate is the data as stored, a float32 copy unless stored as float32, and one byte
    per voxel for the finiteness check. A header that cannot be read is left to
    :func:`read_volume`'s own one-line errors.
    """
    from .resources import check_fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header
                dims = [int(h.nx), int(h.ny), int(h.nz)]
                mode = int(h.mode)
    except Exception:  # noqa: BLE001 - read_volume reports an unreadable header in one line
        return
    if min(dims) <= 0:
        return
    voxels = float(dims[0]) * float(dims[1]) * float(dims[2])
    stored = _MODE_BYTES.get(mode, 4.0)
    need = voxels * (stored + (0.0 if mode == 2 else 4.0) + 1.0)
    check_fits(
        need,
        f"the header says {dims[0]} x {dims[1]} x {dims[2]} voxels (MRC mode {mode}); reading them",
        path,
        "header",
        f"expected a {what} that fits in memory (bin it, or cut out the region to search)",
    )


def check_voxel_size_agrees(path, voxel_size_angstrom: float, what: str, advice: str, field: str) -> float:
    """The voxel size in ``path``'s header (0 when absent), refused (one :class:`InputError`
    naming ``field`` and ``advice``) when it differs from the tomogram's by more than 1 %."""
    vs = read_voxel_size(path)
    voxel = float(voxel_size_angstrom)
    if vs > 0 and abs(vs - voxel) > 0.01 * voxel:
        raise InputError(
            f"{what + ' ' if what else ''}voxel size {vs:g} A differs from the tomogram's {voxel:g} A by more than"
            f" 1 %; {advice}",
            path,
            field,
        )
    return vs


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
        if self.final.is_dir():
            raise InputError("is a folder; expected a file name to write", self.final, "output")
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=".part", dir=self.final.parent)
        except FileExistsError:
            raise InputError("a file stands where the output folder should be", self.final.parent, "output") from None
        except OSError as exc:
            raise InputError(f"cannot write here ({exc.strerror or exc})", self.final.parent, "output") from None
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                # mkstemp creates 0600; give the finished file the usual umask-based mode
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp, 0o666 & ~umask)
                os.replace(self.tmp, self.final)
            except OSError as err:
                self.tmp.unlink(missing_ok=True)
                raise InputError(f"cannot write ({err.strerror or err})", self.final, "output") from None
            return False
        self.tmp.unlink(missing_ok=True)
        if issubclass(exc_type, OSError) and not issubclass(exc_type, InputError):
            # a full disk or a vanished folder: one line, and no .part file left behind
            raise InputError(f"cannot write ({getattr(exc, 'strerror', None) or exc})", self.final, "output") from None
        return False


def write_volume(
    path, data: np.ndarray, voxel_size_angstrom: float, *, dtype=np.float32, label: str = "tomomatch"
) -> Path:
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
