"""Tar archives from clients, read with bounded memory and bounded work.

`tarfile` trusts the sizes an archive declares: it reads a PAX extended header or a GNU
long-name header whole into memory, so a 3 MB .tar.gz can declare (and gzip can inflate) a
3 GiB header. Here the archive is decompressed by this module, and tarfile reads through a
wrapper that refuses any single read above MAX_READ bytes (a tar header block is 512 bytes;
data is copied in chunks of at most MAX_READ) and any read or seek past MAX_STREAM bytes of
decompressed stream. GNU sparse files, whose block maps tarfile also reads unbounded, are
refused.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

MAX_READ = 64 * 1024  # bytes tarfile may ask for at once: bounds every header
COPY_CHUNK = MAX_READ
# The compressions an import accepts, by their magic bytes.
COMPRESSIONS: dict[bytes, Callable[[BinaryIO], BinaryIO]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}


# What a damaged compressed stream raises besides OSError and tarfile's own errors.
DAMAGED = (EOFError, zlib.error, lzma.LZMAError)


class ArchiveRefused(Exception):
    """The archive asks for more memory or work than an import may use."""


class BoundedStream(io.RawIOBase):
    """A read-only view of `inner` that refuses oversized reads and reads past `limit`."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        super().__init__()
        self._inner, self._limit = inner, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ:
            raise ArchiveRefused(
                f"it has a header or block larger than {MAX_READ // 1024} KiB "
                f"({'unbounded' if size is None or size < 0 else size} bytes)"
            )
        self._within(self._inner.tell() + size)
        return self._inner.read(size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._inner.tell()
        elif whence != io.SEEK_SET:
            raise ArchiveRefused("it needs a seek from its end")
        self._within(offset)
        return self._inner.seek(offset)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        self._inner.close()
        super().close()

    def _within(self, position: int) -> None:
        if position > self._limit:
            raise ArchiveRefused(f"it unpacks to more than {self._limit // 1024**2} MiB")


class _NoSparseFiles(tarfile.TarInfo):
    """tarfile reads the block map of a GNU sparse file (old style, or PAX format 1.0) into
    a list that grows with every block the stream holds: refused, as no adapter is sparse."""

    def _proc_sparse(self, tar):  # type: ignore[no-untyped-def]
        raise ArchiveRefused("it holds a sparse file")

    def _proc_gnusparse_10(self, member, pax_headers, tar):  # type: ignore[no-untyped-def]
        raise ArchiveRefused("it holds a sparse file")


@contextmanager
def open_tar(path: Path, limit: int) -> Iterator[tarfile.TarFile]:
    """A tar archive (plain, gzip, bzip2 or xz) read with at most `limit` bytes of
    decompressed stream and MAX_READ bytes per header. Damage shows as DAMAGED errors."""
    with path.open("rb") as raw, _decompressed(raw) as stream:
        bounded = BoundedStream(stream, limit)
        with tarfile.open(fileobj=bounded, mode="r:", tarinfo=_NoSparseFiles) as tar:
            yield tar


def _decompressed(raw: BinaryIO) -> BinaryIO:
    magic = raw.read(6)
    raw.seek(0)
    for prefix, decompress in COMPRESSIONS.items():
        if magic.startswith(prefix):
            return decompress(raw)
    return raw
