"""The decoded-image cache of ``image-folder``: one ``.npy`` file of uint8 images per folder.

With ``cache = true`` the uint8 array of decoded images is kept in the cache directory, keyed by
a hash of the file list (relative paths, sizes, modification times) and of the decoding
settings; a later run memory-maps it instead of decoding again. Entries are written through
temporary files renamed into place, and a failure to write one only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from gan_pipe.plugins.data.image_folder import ImageFolderParams

#: Bumped when decoding changes (filter, crop rule), so old caches are not used.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$GAN_PIPE_CACHE/datasets``, else ``~/.cache/gan-pipe/datasets``."""
    root = os.environ.get("GAN_PIPE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "gan-pipe"
    return base / "datasets"


def cache_key(root: Path, files: list[Path], params: ImageFolderParams) -> str:
    """Hash of the file list (relative path, size, mtime in ns) and the decoding settings."""
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "image_size": params.image_size,
        "channels": params.channels,
        "skip_corrupt": params.skip_corrupt,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        st = path.stat()
        digest.update(
            f"\n{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:32]


def _load_cached(stem: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]] | None:
    """The cached array (memory-mapped) and skipped files, or None when absent or unusable."""
    import numpy as np

    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        arr = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or tuple(arr.shape[1:]) != shape or len(arr) != meta.get("n"):
        return None
    return arr, list(meta.get("skipped", []))


def _save_cached(stem: Path, images: np.ndarray, skipped: list[str], root: Path) -> bool:
    """Write ``<stem>.npy`` then ``<stem>.json``, each through a temporary file renamed into place
    (the .json is what marks the entry complete). A failure only warns (False): the run goes on."""
    import numpy as np

    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix, write in (
            (".npy", lambda fh: np.save(fh, images, allow_pickle=False)),
            (
                ".json",
                lambda fh: fh.write(
                    json.dumps({"n": len(images), "skipped": skipped, "path": str(root)}).encode()
                ),
            ),
        ):
            fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, stem.with_suffix(suffix))
            finally:
                Path(tmp).unlink(missing_ok=True)
    except OSError as e:
        print(f"image-folder: could not write the cache {stem}.npy: {e}", file=sys.stderr)
        return False
    return True
