"""Decoding once: a folder's images decoded, converted and resized into one array file, reused until a file changes.

    <cache dir>/<key>/            key: a hash of the data set's path and its ImageSpec
      images.npy                  (files, height, width, channels) uint8, one row per file of the
                                  manifest in its order (a file that cannot be read: a row of zeros)
      index.json                  every file's name, size and mtime; the spec; the unreadable files

The cache is used only when every file's name, size and modification time and the spec are
what index.json says; any change decodes the folder again (with a progress bar over the
files) and replaces the entry atomically, so one entry per folder and image size is kept.
Training reads the array a batch of rows at a time (`RowFile`), never whole and never
memory-mapped, so memory does not grow with the number of images.

The cache directory is `data.cache_dir`, else `$CNNLAB_CACHE_DIR`, else ~/.cache/cnnlab/images.

Example:
    images, bad = decoded_images(manifest, ImageSpec(64, 64, "rgb"), cache_root(None))
    images[[0, 5, 7]].shape  # (3, 64, 64, 3)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

import numpy as np

from cnnlab.backend import collector_paused
from cnnlab.data.files import Manifest
from cnnlab.data.spec import ImageSpec
from cnnlab.errors import CnnlabError

CACHE_ENV = "CNNLAB_CACHE_DIR"
FORMAT = 1  # bumped when the files' layout or the decoding changes
_CHUNK = 256  # files decoded in one piece of work: between two progress updates, written in one go
_LARGE_FILE = 64 * 1024  # bytes: files larger than this on average are decoded on all cores

# progress(total, label) -> a context manager yielding update(n): e.g. a progress bar on stderr
Progress = Callable[[int, str], ContextManager[Callable[[int], None]]]


def cache_root(configured: str | None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "cnnlab" / "images"


class RowFile:
    """A `.npy` array on disk whose rows are read on demand, a batch at a time.

    `rows[indices]` and `rows[start:stop]` return NumPy arrays; nothing else is kept in memory.
    Reads use `os.preadv` straight into the array they return (one copy, from the page cache),
    so threads (tf.data's parallel calls) can share one file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def complete(self) -> bool:
        """Whether the file holds every row its header promises (not cut short by a full disk or a copy)."""
        return os.fstat(self._fd).st_size >= self._offset + len(self) * self._row

    def __getitem__(self, which) -> np.ndarray:
        if isinstance(which, slice):
            start, stop, step = which.indices(len(self))
            if step == 1:
                out = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
                self._read_into(out, start)
                return out
            which = np.arange(start, stop, step)
        rows = np.asarray(which, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for j in np.argsort(rows, kind="stable"):  # in file order: the disk reads ahead
            self._read_into(out[j], int(rows[j]))
        return out

    def _read_into(self, out: np.ndarray, row: int) -> None:
        """Fill `out` (whole rows, C order) from row `row` on."""
        view, offset = memoryview(out.reshape(-1).view(np.uint8)), self._offset + row * self._row
        while view.nbytes:
            done = os.preadv(self._fd, [view], offset)
            if done <= 0:
                raise OSError(f"{self.path}: ends before row {(offset - self._offset) // self._row}")
            view, offset = view[done:], offset + done

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def decoded_images(manifest: Manifest, spec: ImageSpec, root: Path, progress: Progress | None = None,
                   use_cache: bool = True) -> tuple[RowFile | np.ndarray, dict[int, str]]:
    """Every file of `manifest` decoded as `spec` says: (the images, {row: why it cannot be read}).

    With `use_cache`, the images come from (or go to) the cache under `root`; without it,
    they are decoded into memory.
    """
    fingerprint = _fingerprint(manifest)
    if not use_cache:
        images = np.zeros((len(manifest.files), *spec.shape), np.uint8)
        bad = _decode_all(manifest, spec, fingerprint, progress,
                          lambda start, rows: images.__setitem__(slice(start, start + len(rows)), rows))
        return images, bad
    slot = root / _key(manifest, spec)
    cached = _read_index(slot)
    if cached is not None and cached["spec"] == spec.to_dict() and cached["files"] == fingerprint:
        images = _row_file(slot / "images.npy")
        if images is not None and images.complete and len(images) == len(manifest.files):
            return images, {int(i): why for i, why in cached["bad"].items()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    except OSError as exc:
        raise CnnlabError(
            f"{root}: cannot write the decoded-image cache ({exc.strerror}); set data.cache_dir to a "
            "writable folder, or data.cache: false to decode into memory."
        ) from None
    try:
        with open(building / "images.npy", "wb") as handle:
            shape = (len(manifest.files), *spec.shape)
            np.lib.format.write_array_header_1_0(
                handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                         "shape": shape})
            bad = _decode_all(manifest, spec, fingerprint, progress, lambda start, rows: handle.write(rows.data))
        index = {"format": FORMAT, "source": str(manifest.source.resolve()), "spec": spec.to_dict(),
                 "files": fingerprint, "bad": {str(i): why for i, why in bad.items()}}
        (building / "index.json").write_text(json.dumps(index))
        if slot.exists():
            shutil.rmtree(slot, ignore_errors=True)
        os.replace(building, slot)
    except OSError as exc:
        raise CnnlabError(f"{root}: cannot write the decoded-image cache ({exc.strerror}).") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return RowFile(slot / "images.npy"), bad


def decode_file(path: Path, spec: ImageSpec, plain_png: bool = False) -> np.ndarray:
    """One image file as `spec` makes it: (height, width, channels) uint8. A CnnlabError if unreadable.

    `plain_png`: try `open_plain_png` first (the same pixels, in half the time, for small PNGs);
    only where Pillow's bomb warning is an error already.
    """
    from cnnlab.preprocess import open_image, open_plain_png

    image = open_plain_png(str(path)) if plain_png else None
    if image is None:
        image = open_image(path, draft_size=spec.draft_size)
    return spec.apply(image)  # as predict prepares a picture


def _decode_all(manifest: Manifest, spec: ImageSpec, fingerprint: list[list], progress: Progress | None,
                put) -> dict[int, str]:
    """Decode every file in order, handing each chunk of rows to `put(start, rows)`, on every core.

    Photos (files over _LARGE_FILE on average) decode in threads: Pillow releases the GIL while
    it decodes and resizes them, and a worker process would send every decoded row back
    through a pipe (on 2 cores, threads took 0.35 s for hymenoptera's 245 photos at 224x224,
    forked processes 0.85 s, one thread 0.7 s). Small files (MNIST-sized PNGs) decode in worker
    processes, forked: their cost is Python's own, and threads contending for the GIL were
    slower than one thread (measured). Where TensorFlow is already imported (a second run in
    one process), a fork could inherit its locks mid-use, so small files decode in this thread.
    """
    from cnnlab.preprocess import open_image  # noqa: F401  (imported here, before workers fork)

    bad: dict[int, str] = {}
    total = len(manifest.files)
    cores = os.cpu_count() or 1
    size = max(8, min(_CHUNK, -(-total // (4 * cores))))  # a few pieces per core, even for a small folder
    chunks = [(start, min(total, start + size)) for start in range(0, total, size)]
    sizes = [size for _, size, _ in fingerprint if size > 0]
    pool: Executor | None = None
    if cores > 1 and len(chunks) > 1 and sizes and sum(sizes) / len(sizes) > _LARGE_FILE:
        pool = ThreadPoolExecutor(max_workers=cores)  # photos: no rows pickled back from other processes
    elif cores > 1 and len(chunks) > 1 and "tensorflow" not in sys.modules and "fork" in mp.get_all_start_methods():
        pool = ProcessPoolExecutor(max_workers=min(cores, len(chunks)), mp_context=mp.get_context("fork"))
    # threads share the process's warning filters: the per-file guard of open_image; one thread or a
    # worker process sets it once per piece of work and can take open_plain_png's shorter way
    plain = not isinstance(pool, ThreadPoolExecutor)
    work = [(manifest.root, manifest.files[a:b], spec, plain) for a, b in chunks]
    bar = progress(total, f"decoding {total:,} images ...") if progress else nullcontext(lambda n: None)
    with bar as update, collector_paused(), pool or nullcontext():  # (why: bench/RESULTS.md, third session)
        decoded = pool.map(_decode_chunk, work) if pool else map(_decode_chunk, work)
        for (start, stop), (rows, why) in zip(chunks, decoded):
            bad.update({start + j: reason for j, reason in why.items()})
            put(start, rows)
            update(stop - start)
    return bad


def _decode_chunk(work: tuple[Path, list[str], ImageSpec, bool]) -> tuple[np.ndarray, dict[int, str]]:
    """Files (relative to a root) as `spec` makes them: (rows, {position: why it cannot be read})."""
    from PIL import Image

    root, files, spec, plain = work
    rows = np.zeros((len(files), *spec.shape), np.uint8)  # an unreadable file: a row of zeros
    bad: dict[int, str] = {}
    with warnings.catch_warnings() if plain else nullcontext():
        if plain:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        for j, relative in enumerate(files):
            try:
                rows[j] = decode_file(root / relative, spec, plain)
            except CnnlabError as exc:
                bad[j] = _reason(exc, root / relative)
    return rows, bad


def _row_file(path: Path) -> RowFile | None:
    """The cache's images, or None where the file is damaged (then it is decoded again)."""
    try:
        return RowFile(path)
    except (OSError, ValueError):
        return None


def _reason(error: CnnlabError, path: Path) -> str:
    """The short why of an image error: "is an empty file", "cannot read the image (truncated...)"."""
    text = str(error).removeprefix(f"{path}: ")
    return text.split(";")[0].rstrip(".")


def _fingerprint(manifest: Manifest) -> list[list]:
    rows, root = [], str(manifest.root)
    for relative in manifest.files:
        try:
            stat = os.stat(os.path.join(root, relative))
            rows.append([relative, stat.st_size, stat.st_mtime_ns])
        except OSError:
            rows.append([relative, -1, 0])  # a broken link: unreadable; mending it changes this row
    return rows


def _key(manifest: Manifest, spec: ImageSpec) -> str:
    what = json.dumps([FORMAT, str(manifest.source.resolve()), spec.to_dict()], sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in manifest.source.name[:40])
    return f"{name}-{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def _read_index(slot: Path) -> dict | None:
    try:
        index = json.loads((slot / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not (slot / "images.npy").is_file():
        return None
    return index


DIGESTS = "digests.npy"  # beside a cache entry's images.npy: one 64-bit pixel digest per row


def row_digests(images: RowFile | np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """A 64-bit BLAKE2 digest of each row's pixels: equal digests, the same decoded image.

    A cache entry's digests are computed once and kept beside its images (a new entry starts
    without them), so `train` and `cnnlab data` see exact duplicates without reading every row.
    """
    kept = Path(images.path).with_name(DIGESTS) if isinstance(images, RowFile) else None
    if kept is not None:
        try:
            digests = np.load(kept)
            if digests.shape == (len(images),):
                return digests
        except (OSError, ValueError):
            pass
    digests = np.empty(len(images), np.uint64)
    bar = progress(len(images), f"hashing {len(images):,} images ...") if progress else nullcontext(lambda n: None)
    with bar as update:
        for start in range(0, len(images), _CHUNK):
            rows = images[start:start + _CHUNK]
            digests[start:start + len(rows)] = [
                int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows]
            update(len(rows))
    if kept is not None:
        from cnnlab.rundir import atomic_path

        try:
            with atomic_path(kept, ".npy") as tmp:
                np.save(tmp, digests)
        except (OSError, CnnlabError):  # a full disk too
            pass  # a read-only cache only costs the next run this pass again
    return digests
