"""The one exception the dataset loaders raise for malformed annotation files and images."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """An annotation file or image is not in the expected format.

    The message starts with ``FILE:LINE:`` (or ``FILE:`` when no line applies), so it reads like a
    compiler error: ``/data/affectnet/training.csv:17: expected 9 columns, got 7``.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            message = f"{where}: {message}"
        super().__init__(message)

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.reason, self.path, self.line))


def find_missing(paths) -> list[int]:
    """Positions in ``paths`` whose file does not exist.

    Lists each parent folder once instead of stat-ing every file, which matters for the
    hundreds of thousands of frames of Aff-Wild2 and AffectNet on network file systems.
    """
    listing: dict[str, set[str] | None] = {}
    missing = []
    for i, p in enumerate(paths):
        folder, name = os.path.split(p)
        names = listing.get(folder, False)
        if names is False:
            try:
                names = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                names = None
            listing[folder] = names
        if names is None or name not in names:
            missing.append(i)
    return missing


def missing_images_error(missing: list[tuple[str, str]], source: str, limit: int = 5) -> FileNotFoundError:
    """One error naming the missing images (``(image path, where it is listed)`` pairs)."""
    shown = "; ".join(f"{path} (listed at {where})" for path, where in missing[:limit])
    more = f"; and {len(missing) - limit} more" if len(missing) > limit else ""
    return FileNotFoundError(f"{len(missing)} image(s) listed in {source} not found: {shown}{more}")
