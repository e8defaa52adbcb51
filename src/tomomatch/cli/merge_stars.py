"""``tomomatch merge-stars`` (module name for the CLI registry; the command lives in ``merge``)."""

from .merge import register, run  # noqa: F401
