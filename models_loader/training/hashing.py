"""sha256 of model files for metadata, cached per (path, size, mtime) in this process."""
import hashlib
import os

_CACHE = {}


def sha256_file(path, chunk=1 << 22):
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
