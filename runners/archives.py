"""Artifact archives on the runner: collecting `artifacts: paths`, writing a tar.gz while
hashing it, and unpacking one safely. Standard library only, streaming throughout: a file
goes into or out of an archive in pieces, so memory stays flat whatever the size.

Unpacking treats the archive as hostile (another job made it): entries with absolute paths
or `..` components, symlinks that point out of the destination, entries below a symlinked
directory that leads out of it, hard links, devices and fifos are skipped, each with a log
line; unpacking stops past a bound on the decompressed bytes (a zip bomb), with a log line.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CHUNK_BYTES = 1024 * 1024
# GitLab's ARTIFACT_COMPRESSION_LEVEL names.
COMPRESSION_LEVELS = {"fastest": 1, "fast": 3, "default": 6, "slow": 7, "slowest": 9}

Log = Callable[[str], None]


class ArchiveError(Exception):
    """The archive cannot be written or unpacked (a bound was passed, the data is corrupt)."""


# --- Choosing what goes in.


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A doublestar glob as a regex on a relative posix path: `**` crosses directories, `*`
    and `?` do not; a trailing `/` matches the directory and everything below it."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if pattern.endswith("/"):
        pattern += "**"
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[{'^' + body[1:] if body.startswith('!') else body}]")
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?$" if not pattern.endswith("**") else "".join(out) + "$")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def collect(root: Path, paths: Iterable[str], exclude: Iterable[str] = (), *, log: Log) -> list[str]:
    """The relative paths (directories, files, symlinks) that `paths` (globs, `**` included)
    name under `root`, minus `exclude`, sorted. Paths outside `root` and symlinks pointing out
    of it are left out, with a log line each."""
    real_root = os.path.realpath(root)
    excluded = [_glob_regex(p) for p in exclude]
    found: set[str] = set()

    def add(relative: str) -> None:
        relative = relative.replace(os.sep, "/").strip("/")
        if not relative or relative in found or any(r.match(relative) for r in excluded):
            return
        full = os.path.join(root, relative)
        if os.path.islink(full):
            target = os.path.realpath(full)
            if not _inside(target, real_root):
                log(f"WARNING: {relative}: a symlink to {os.readlink(full)}, outside the project: skipped")
                return
        found.add(relative)

    for pattern in paths:
        if os.path.isabs(pattern) or ".." in Path(pattern).parts:
            log(f"WARNING: {pattern}: outside the project directory: skipped")
            continue
        matches = glob.glob(pattern, root_dir=root, recursive=True, include_hidden=True)
        if not matches:
            log(f"WARNING: {pattern}: no matching files")
            continue
        for match in matches:
            full = os.path.join(root, match)
            if not _inside(os.path.realpath(os.path.dirname(os.path.abspath(full))), real_root):
                log(f"WARNING: {match}: below a symlink that leads outside the project: skipped")
                continue
            add(match)
            if os.path.isdir(full) and not os.path.islink(full):
                for directory, dirs, files in os.walk(full):
                    base = os.path.relpath(directory, root)
                    for name in sorted(dirs + files):
                        add(os.path.join(base, name))
    return sorted(found)


# --- Writing.


class _HashingWriter:
    def __init__(self, raw: IO[bytes]):
        self.raw, self.size, self.hash = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.size += len(data)
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


@dataclass
class Written:
    path: Path
    size: int
    sha256: str
    files: int
    bytes_in: int


def write_archive(root: Path, members: list[str], destination: Path, *, level: int = 6, log: Log) -> Written:
    """Write `members` (relative to `root`) into a tar.gz at `destination`, hashing the
    compressed bytes as they are written. Regular files, directories and symlinks only."""
    files = bytes_in = 0
    with destination.open("wb") as raw:
        writer = _HashingWriter(raw)
        # mtime=0: the same files give the same gzip header.
        with (
            gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=level, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
        ):
            for relative in members:
                full = os.path.join(root, relative)
                info = tarfile.TarInfo(relative)
                try:
                    st = os.lstat(full)
                except FileNotFoundError:
                    log(f"WARNING: {relative}: vanished while archiving: skipped")
                    continue
                info.mode, info.mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
                if stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
                    archive.addfile(info)
                elif stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    archive.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as handle:
                        info.size = os.fstat(handle.fileno()).st_size
                        try:
                            archive.addfile(info, handle)
                        except OSError as exc:
                            raise ArchiveError(f"{relative} changed while it was archived: {exc}") from exc
                    files += 1
                    bytes_in += info.size
                else:
                    log(f"WARNING: {relative}: not a file, directory or symlink: skipped")
    return Written(path=destination, size=writer.size, sha256=writer.hash.hexdigest(), files=files, bytes_in=bytes_in)


def hash_paths(root: Path, patterns: Iterable[str]) -> str:
    """A sha256 over what `patterns` name under `root`: paths, executable bits, symlink
    targets and file contents, in a stable order (reuse keys). A pattern that matches
    nothing counts too, so creating the file changes the hash."""
    digest = hashlib.sha256()
    for pattern in patterns:
        members = collect(root, [pattern], log=lambda _: None)
        digest.update(f"pattern\0{pattern}\0{len(members)}\0".encode())
        for relative in members:
            full = os.path.join(root, relative)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                digest.update(f"link\0{relative}\0{os.readlink(full)}\0".encode())
            elif stat.S_ISREG(st.st_mode):
                digest.update(f"file\0{relative}\0{st.st_mode & 0o111}\0{st.st_size}\0".encode())
                with open(full, "rb") as handle:
                    while chunk := handle.read(CHUNK_BYTES):
                        digest.update(chunk)
            elif stat.S_ISDIR(st.st_mode):
                digest.update(f"dir\0{relative}\0".encode())
    return digest.hexdigest()


# --- Unpacking.


def _archive_too_large(limit: int) -> ArchiveError:
    return ArchiveError(f"the archive unpacks to more than {limit} bytes: unpacking stopped (a zip bomb?)")


class BoundedReader:
    """Counts the decompressed bytes read through it (for tarfile: headers and padding too) and
    raises `too_large(limit)` past `limit`: a zip bomb stops early."""

    def __init__(self, raw: IO[bytes], limit: int, too_large: Callable[[int], Exception] | None = None):
        self.raw, self.limit, self.count = raw, limit, 0
        self.too_large = too_large or (
            lambda limit: ArchiveError(
                f"the archive unpacks to more than {limit} bytes: unpacking stopped (a zip bomb?)"
            )
        )

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise self.too_large(self.limit)
        return data


@dataclass
class Unpacked:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def unpack(source: IO[bytes], destination: Path, *, max_bytes: int, log: Log) -> Unpacked:
    """Unpack a tar.gz stream into `destination`, skipping every unsafe entry with a log line
    and stopping (ArchiveError) once more than `max_bytes` came out of the decompressor."""
    result = Unpacked()
    root = os.path.realpath(destination)
    bounded = BoundedReader(gzip.GzipFile(fileobj=source, mode="rb"), max_bytes)

    def skip(name: str, why: str) -> None:
        result.skipped.append(name)
        log(f"WARNING: {name}: {why}: skipped")

    links: list[tuple[str, str]] = []  # (name, path) of each symlink made
    try:
        with tarfile.open(fileobj=bounded, mode="r|") as archive:
            for member in archive:
                name = member.name
                try:
                    _unpack_member(archive, member, root, result, links, skip)
                except gzip.BadGzipFile:
                    raise  # an OSError too, but the archive's fault: corrupt, below
                except OSError as exc:
                    # Entries that clash with what is there (a file below a file, a file where a
                    # directory is, a name too long): this entry is left out, the rest goes on.
                    skip(name, f"cannot be written ({exc.strerror or exc})")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(f"the archive is corrupt: {exc}") from exc
    # Each link was checked when it was made, but a later one can change where an earlier one
    # leads (x -> y/.. then y -> .): whatever leads out of the workspace at the end is removed.
    for name, path in links:
        if os.path.islink(path) and not _inside(os.path.realpath(path), root):
            link = os.readlink(path)
            os.unlink(path)
            skip(name, f"a symlink to {link}, which leads outside the workspace once unpacked")
    return result


def _unpack_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: str,
    result: Unpacked,
    links: list[tuple[str, str]],
    skip: Callable[[str, str], None],
) -> None:
    name = member.name
    parts = Path(name).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        skip(name, "a path outside the workspace")
        return
    relative = os.path.normpath(name)
    if relative in {".", ""}:
        return
    target = os.path.join(root, relative)
    parent = os.path.dirname(target)
    if not _inside(os.path.realpath(parent), root):
        skip(name, "below a symlink that leads outside the workspace")
        return
    if member.isdir():
        if os.path.islink(target):
            skip(name, "a directory where a symlink already is")
            return
        os.makedirs(target, exist_ok=True)
        os.chmod(target, (member.mode & 0o777) | 0o700)
    elif member.isfile():
        os.makedirs(parent, exist_ok=True)
        _write_member(archive, member, target)
        result.files += 1
        result.bytes += member.size
    elif member.issym():
        link = member.linkname
        resolved = os.path.realpath(os.path.join(parent, link))
        if os.path.isabs(link) or not _inside(resolved, root):
            skip(name, f"a symlink to {link}, outside the workspace")
            return
        os.makedirs(parent, exist_ok=True)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        os.symlink(link, target)
        links.append((name, target))
    elif member.islnk():
        skip(name, "a hard link")
    else:
        skip(name, "a device, fifo or other special file")


def _write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
    if os.path.islink(target):
        os.unlink(target)  # replace the link itself, never write through it
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(target, flags, (member.mode & 0o777) | 0o600)
    source = archive.extractfile(member)
    with os.fdopen(fd, "wb") as out:
        if source is not None:
            while chunk := source.read(CHUNK_BYTES):
                out.write(chunk)
    os.chmod(target, (member.mode & 0o777) | 0o600)
