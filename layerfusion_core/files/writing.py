"""Writing files that belong together: each goes to a short temporary name in its folder,
then all of them are moved into place, never over an existing file; when any write fails,
the files of the set already placed are removed again (files that were there before are
never touched).

Temporary names are short (``.lf-<12 hex>.tmp``) so that a final name that fits the file
system's name limit never fails because of the temporary one, start with a dot and end in
``.tmp`` (ComfyUI's file counter ignores them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Mapping

Writer = Callable[[str], None]
"""``write(tmp_path)``: writes the file's content to ``tmp_path`` (must not rely on its extension)."""


def _new_temp(folder: str) -> str:
    tmp = os.path.join(folder, f".lf-{secrets.token_hex(6)}.tmp")
    # O_EXCL: never clobber a file we did not create; mode 0o666 lets the umask apply as
    # for any ordinary file (tempfile.mkstemp would leave it 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def _remove(paths) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


def atomic_write(path: str, write: Writer) -> None:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then rename it to
    ``path`` (replacing it); the temporary file is removed if ``write`` fails."""
    tmp = _new_temp(os.path.dirname(os.path.abspath(path)))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove([tmp])
        raise


def write_new_files(files: Mapping[str, Writer]) -> None:
    """Write every ``path: write`` of ``files`` as one set: all of them or none.

    Raises FileExistsError (writing nothing) when any path exists already, and re-raises
    any failure of a writer after removing the set's temporary and already placed files.
    """
    taken = [path for path in files if os.path.lexists(path)]
    if taken:
        raise FileExistsError(f"not overwriting existing file(s): {', '.join(taken)}")
    temps: dict[str, str] = {}
    placed: list[str] = []
    try:
        for path, write in files.items():
            temps[path] = _new_temp(os.path.dirname(os.path.abspath(path)))
            write(temps[path])
        for path, tmp in temps.items():
            # Claim the name exclusively first, so a file that appeared meanwhile is never replaced.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            placed.append(path)
            os.replace(tmp, path)
    except BaseException:
        _remove(temps.values())
        _remove(placed)
        raise
