from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from runners.archives import ArchiveError, collect, hash_paths, unpack, write_archive


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for name, text in {
        "dist/app.bin": "binary",
        "dist/lib/util.so": "library",
        "dist/lib/util.o": "object",
        "dist/.hidden": "dot",
        "build/a.o": "a",
        "build/deep/b.o": "b",
        "build/keep.txt": "keep",
        "README.md": "readme",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "dist/run.sh").write_text("#!/bin/sh\n")
    (root / "dist/run.sh").chmod(0o755)
    return root


def lines() -> list[str]:
    return []


def tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def test_paths_take_directories_whole_and_globs_with_double_stars(project):
    log: list[str] = []

    found = collect(project, ["dist/", "build/**/*.o"], log=log.append)

    assert found == [
        "build/a.o",
        "build/deep/b.o",
        "dist",
        "dist/.hidden",
        "dist/app.bin",
        "dist/lib",
        "dist/lib/util.o",
        "dist/lib/util.so",
        "dist/run.sh",
    ]
    assert log == []


def test_exclude_leaves_out_what_its_globs_match(project):
    found = collect(project, ["dist", "build"], ["**/*.o", "dist/.hidden"], log=lines().append)

    assert "dist/lib/util.o" not in found and "build/deep/b.o" not in found and "dist/.hidden" not in found
    assert {"dist/lib/util.so", "build/keep.txt"} <= set(found)


def test_paths_outside_the_project_and_symlinks_leading_out_are_skipped_with_a_log_line(project, tmp_path):
    (tmp_path / "secret").write_text("top secret")
    os.symlink(tmp_path / "secret", project / "dist/leak")
    os.symlink("../../secret", project / "dist/relative-leak")
    os.symlink("app.bin", project / "dist/alias")
    log: list[str] = []

    found = collect(project, ["dist", "../secret", "/etc/passwd", "missing/*"], log=log.append)

    assert "dist/alias" in found
    assert "dist/leak" not in found and "dist/relative-leak" not in found
    assert any("dist/leak: a symlink to" in line and "outside the project" in line for line in log)
    assert "WARNING: ../secret: outside the project directory: skipped" in log
    assert "WARNING: /etc/passwd: outside the project directory: skipped" in log
    assert "WARNING: missing/*: no matching files" in log


def test_an_archive_round_trip_keeps_contents_modes_and_inner_symlinks(project, tmp_path):
    os.symlink("app.bin", project / "dist/alias")
    members = collect(project, ["dist"], log=lines().append)
    written = write_archive(project, members, tmp_path / "a.tar.gz", level=1, log=lines().append)
    target = tmp_path / "unpacked"
    target.mkdir()

    with (tmp_path / "a.tar.gz").open("rb") as handle:
        result = unpack(handle, target, max_bytes=10**6, log=lines().append)

    assert written.files == 5 and result.files == 5 and result.skipped == []
    assert (target / "dist/lib/util.so").read_text() == "library"
    assert os.access(target / "dist/run.sh", os.X_OK)
    assert os.readlink(target / "dist/alias") == "app.bin"
    assert written.size == (tmp_path / "a.tar.gz").stat().st_size


def test_the_same_files_give_the_same_archive_checksum(project, tmp_path):
    members = collect(project, ["dist"], log=lines().append)

    first = write_archive(project, members, tmp_path / "1.tar.gz", log=lines().append)
    second = write_archive(project, members, tmp_path / "2.tar.gz", log=lines().append)

    assert first.sha256 == second.sha256


def test_unpacking_skips_traversal_absolute_paths_and_symlinks_out_of_the_workspace(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "workspace"
    target.mkdir()
    hostile = tar_gz(
        [
            (member("../outside/escaped.txt"), b"pwned"),
            (member("/tmp/absolute.txt"), b"pwned"),
            (member("ok/../../outside/sneaky.txt"), b"pwned"),
            (member("link-out", tarfile.SYMTYPE, str(outside)), None),
            (member("relative-out", tarfile.SYMTYPE, "../outside"), None),
            (member("relative-out/through.txt"), b"pwned"),
            (member("hard", tarfile.LNKTYPE, "/etc/passwd"), None),
            (member("fifo", tarfile.FIFOTYPE), None),
            (member("fine/kept.txt"), b"kept"),
        ]
    )
    log: list[str] = []

    result = unpack(hostile, target, max_bytes=10**6, log=log.append)

    assert list(outside.iterdir()) == []
    assert not Path("/tmp/absolute.txt").exists()
    assert (target / "fine/kept.txt").read_text() == "kept"
    assert not (target / "link-out").exists() and not (target / "relative-out").is_symlink()
    assert result.files == 2  # relative-out/through.txt, in a plain directory inside
    assert "WARNING: ../outside/escaped.txt: a path outside the workspace: skipped" in log
    assert "WARNING: /tmp/absolute.txt: a path outside the workspace: skipped" in log
    assert f"WARNING: link-out: a symlink to {outside}, outside the workspace: skipped" in log
    assert "WARNING: relative-out: a symlink to ../outside, outside the workspace: skipped" in log
    assert "WARNING: hard: a hard link: skipped" in log
    assert "WARNING: fifo: a device, fifo or other special file: skipped" in log


def test_a_file_is_never_written_through_a_symlink_already_in_the_workspace(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    target = tmp_path / "workspace"
    target.mkdir()
    os.symlink(outside, target / "config")  # e.g. left by an earlier archive or the checkout

    unpack(tar_gz([(member("config"), b"replaced")]), target, max_bytes=10**6, log=lines().append)

    assert outside.read_text() == "original"
    assert not (target / "config").is_symlink() and (target / "config").read_text() == "replaced"


def test_a_directory_symlink_in_the_workspace_cannot_lead_entries_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "workspace"
    target.mkdir()
    os.symlink(outside, target / "door")
    log: list[str] = []

    unpack(tar_gz([(member("door/file.txt"), b"pwned")]), target, max_bytes=10**6, log=log.append)

    assert list(outside.iterdir()) == []
    assert "WARNING: door/file.txt: below a symlink that leads outside the workspace: skipped" in log


def test_unpacking_stops_with_a_clear_error_past_the_decompressed_size_bound(tmp_path):
    bomb = tar_gz([(member("zeros.bin"), b"\0" * 5_000_000)])  # a few KB compressed
    target = tmp_path / "workspace"
    target.mkdir()

    with pytest.raises(ArchiveError, match="unpacks to more than 1000000 bytes: unpacking stopped"):
        unpack(bomb, target, max_bytes=1_000_000, log=lines().append)
    assert bomb.getbuffer().nbytes < 50_000


def test_a_corrupt_archive_is_an_archive_error(tmp_path):
    with pytest.raises(ArchiveError, match="corrupt"):
        unpack(io.BytesIO(b"\x1f\x8b\x08\x00garbage" * 10), tmp_path, max_bytes=10**6, log=lines().append)


def test_the_hash_of_paths_changes_with_contents_and_with_a_new_file(project):
    before = hash_paths(project, ["dist", "Dockerfile"])
    (project / "dist/app.bin").write_text("changed")
    changed = hash_paths(project, ["dist", "Dockerfile"])
    (project / "Dockerfile").write_text("FROM scratch\n")

    assert len({before, changed, hash_paths(project, ["dist", "Dockerfile"])}) == 3
    assert hash_paths(project, ["dist"]) == hash_paths(project, ["dist"])
