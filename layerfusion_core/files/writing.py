"""Writing files that belong together: each goes to a short temporary name in its folder,
then all of them are moved into place, never over an existing file; when any write fails,
the files of the set already placed are removed again (files that were there before are
never touched).

Temporary names are short (``.lf-<12 hex>.tmp``) so that a final name that fits the file
system's name limit never fails because of the temporary one, start with a dot and end in
``.tmp`` (ComfyUI's file counter ignores them).

Also the checks of a save prefix (SaveImage's ``filename_prefix``: folders and a file name
part) and of the length of the names it gives, so that a save is refused, naming the input,
before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Mapping

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


MAX_NAME_BYTES = 255
"""A file name's limit: 255 bytes of UTF-8 (ext4, APFS; NTFS counts 255 UTF-16 units)."""

NOT_IN_NAMES = '<>:"|?*'
"""Characters Windows does not allow in file names (macOS Finder shows ':' as '/')."""

WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
"""Names Windows reserves for devices, also with an extension ("nul.txt")."""


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def prefix_file_name(prefix: str) -> str:
    """The file name part of a save prefix as ComfyUI's get_save_image_path takes it (before
    its %date%-style tokens are replaced): after the last "/" of the normalised path, so
    "" and "a/.." give "."."""
    return posixpath.basename(posixpath.normpath(prefix.replace(os.sep, "/")))


def check_filename_prefix(prefix: object, input_name: str, example: str) -> str:
    """Return ``prefix``, a save prefix as SaveImage takes it (``sub/folder/name``, with
    %date%-style tokens), or raise ValueError naming ``input_name`` and what is wrong:

    - a control character (NUL gives Python's bare "embedded null byte"; a line break, tab or
      other invisible control character makes names no one can type), or one of
      ``< > : " | ? *``, which Windows does not allow; a backslash where it is no folder
      separator (it is one on Windows; elsewhere it would end up in the name);
    - a folder name Windows cannot hold (a device name such as ``CON``, or one ending in a dot
      or space);
    - an empty prefix, or one whose file name part (after the last ``/``, as ComfyUI resolves
      it) starts with ``.``: the files would be hidden, and ``._*`` files are taken for
      AppleDouble files that macOS drops when copying. ``example`` is the name suggested.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"{input_name}: expected text, got {type(prefix).__name__}")
    _check_characters(prefix, input_name)
    parts = prefix.replace(os.sep, "/").split("/")
    _check_folders(parts[:-1], input_name)
    _check_file_name(prefix, parts[-1], input_name, example)
    return prefix


def _check_characters(prefix: str, input_name: str) -> None:
    """Control characters, characters Windows refuses, and a backslash that is no separator."""
    for position, char in enumerate(prefix, start=1):
        if unicodedata.category(char) == "Cc":
            what = "NUL (U+0000)" if char == "\0" else f"U+{ord(char):04X}"
            raise ValueError(
                f"{input_name}: holds the control character {what} at character {position}, which file "
                "names cannot hold; remove it"
            )
        if char in NOT_IN_NAMES:
            # "%date:yyyy-MM-dd%" is replaced by ComfyUI's web page when it queues, never on the server.
            token = " (a %date:…% token is replaced only by ComfyUI's web page)" if "%date:" in prefix else ""
            raise ValueError(
                f"{input_name}: holds {char!r} at character {position}{token}, which Windows does not allow "
                f"in file names (none of {' '.join(NOT_IN_NAMES)}); use another character, e.g. '_' or '-'"
            )
        if char == "\\" and os.sep != "\\" and os.altsep != "\\":
            raise ValueError(
                f"{input_name}: holds a backslash at character {position}, which here would be part of the "
                "file name (not a folder separator) and which Windows does not allow in names; use / for "
                "subfolders"
            )


def _check_folders(folders: list[str], input_name: str) -> None:
    """Folder names Windows cannot make (device names, a trailing dot or space)."""
    for part in folders:
        if part in ("", ".", ".."):
            continue
        if part.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES or part[-1] in ". ":
            raise ValueError(
                f"{input_name}: the folder name {part!r} cannot be made on Windows (a device name such as "
                "CON or NUL, or a name ending in a dot or a space); use another folder name"
            )


def _check_file_name(prefix: str, last_part: str, input_name: str, example: str) -> None:
    """An empty or hidden file name part, or one Windows reserves for a device."""
    name = prefix_file_name(prefix)
    give = f"give the files a name, e.g. {example!r}"
    if not prefix.strip(" "):
        raise ValueError(
            f"{input_name}: is empty, which would write hidden files ('._00001_…', which macOS also takes "
            f"for resource forks and drops when copying); {give}"
        )
    if not name.strip(" "):
        raise ValueError(f"{input_name}: {prefix!r} has an empty file name part (after the last '/'); {give}")
    if name.startswith("."):
        resolved = "" if last_part == name else f" ({_quoted(prefix)} resolves to it)"
        raise ValueError(
            f"{input_name}: the file name part {_quoted(name)}{resolved} starts with '.', which makes hidden "
            f"files ('{name}_00001_…'; macOS also takes '._' files for resource forks and drops them when "
            f"copying); {give}"
        )
    if "." in name and name.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        raise ValueError(
            f"{input_name}: the file name part {name!r} starts with a name Windows reserves for a device "
            "(such as CON or NUL) followed by a dot; use another name"
        )


def check_name_length(input_name: str, name: str, number: str, suffixes: Iterable[str]) -> None:
    """ValueError naming ``input_name`` when ``name`` (a save's file name part) followed by
    the counter ``number`` ("_00001") and the longest of ``suffixes`` is over MAX_NAME_BYTES,
    saying how long the name part may be with these suffixes."""
    longest = max(suffixes, key=lambda suffix: len(suffix.encode()))
    size, room = len(name.encode()), MAX_NAME_BYTES - len((number + longest).encode())
    if size > room:
        raise ValueError(
            f"{input_name}: the file name part {_quoted(name)} has {size} bytes (UTF-8); with the counter "
            f"{number!r} and this save's longest suffix {longest!r} a file name would have "
            f"{size + MAX_NAME_BYTES - room} bytes, over the {MAX_NAME_BYTES} a file name may have: the name "
            f"part may have at most {room} bytes here; shorten it"
        )
