"""An image's own /etc/passwd, /etc/group and os-release, read strictly (well-formed lines
only; shadowed_by finds the malformed lines a runtime would read anyway), so a remediation
can name the uid behind `USER node` (1000) and, for an image that runs as root, a user it
already has (nginx 101, node 1000, postgres 999) or the Dockerfile lines that create one.

Pure: standard library only, no Django, no I/O. The bytes come from an image's layers and
are hostile: the input, each line and the number of lines are bounded (PasswdError past a
bound), and a line that is not UTF-8, holds a control character, has the wrong number of
fields, an id that is not a plain decimal in 0..2^31-1, or a name that is empty, not
printable or longer than 32 characters is refused with its line number, the rest kept.
No reason quotes the file's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_BYTES = 1 << 20  # a whole passwd or group file
MAX_LINE = 4096  # bytes in one line, its newline excluded
MAX_LINES = 10_000
NAME_MAX = 32  # useradd's limit, and the kubelet's for a name it looks up
UID_MAX = 2147483647  # 2^31-1: the largest uid the kernel and the kubelet accept
NOBODY = 65534
REGULAR_MIN = 1000  # where useradd starts regular accounts (UID_MIN in login.defs)
OS_RELEASE_MAX = 64 << 10

# Control characters (\r, tab and NUL among them), line and paragraph separators, and
# bidirectional overrides and isolates: none belongs in a passwd line.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_DECIMAL_RE = re.compile(r"[0-9]+", re.ASCII)
_OS_ID_RE = re.compile(r"[a-z0-9._-]{1,64}", re.ASCII)

# os-release IDs (ID, then each of ID_LIKE) -> the family whose tools create users alike.
FAMILIES = {
    "alpine": "alpine",
    "debian": "debian",
    "ubuntu": "debian",
    "rhel": "rhel",
    "fedora": "rhel",
    "centos": "rhel",
    "rocky": "rhel",
    "almalinux": "rhel",
    "amzn": "rhel",
}


class PasswdError(ValueError):
    """A file past one of the bounds: nothing of it is used."""


@dataclass(frozen=True)
class Entry:
    """One account of /etc/passwd."""

    name: str
    uid: int
    gid: int
    line: int  # 1-based, counting comments and blank lines
    home: str
    shell: str


@dataclass(frozen=True)
class GroupEntry:
    """One group of /etc/group."""

    name: str
    gid: int
    line: int


def parse_passwd(data: bytes) -> tuple[list[Entry], list[str]]:
    """The accounts of a passwd file, in file order, and the lines refused ("line 7:
    control character"). Raises PasswdError past a bound."""
    entries, refused = [], []
    for number, fields in _records(data, "passwd", 7, refused):
        name, _, uid, gid, _, home, shell = fields
        ids = _id(uid, "uid"), _id(gid, "gid")
        problem = _name_problem(name) or next((p for p in ids if isinstance(p, str)), None)
        if problem:
            refused.append(f"line {number}: {problem}")
            continue
        entries.append(Entry(name, ids[0], ids[1], number, home, shell))  # type: ignore[arg-type]
    return entries, refused


def parse_group(data: bytes) -> tuple[list[GroupEntry], list[str]]:
    """The groups of a group file, in file order, and the lines refused. Raises PasswdError
    past a bound."""
    entries, refused = [], []
    for number, fields in _records(data, "group", 4, refused):
        name, _, gid, _ = fields
        value = _id(gid, "gid")
        problem = _name_problem(name) or (value if isinstance(value, str) else None)
        if problem:
            refused.append(f"line {number}: {problem}")
            continue
        entries.append(GroupEntry(name, value, number))  # type: ignore[arg-type]
    return entries, refused


def _records(data: bytes, what: str, width: int, refused: list[str]):
    """(line number, fields) of each line that is not blank, a comment or refused; refusals
    are appended to `refused`."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"{what}: bytes expected, got {type(data).__name__}")
    if len(data) > MAX_BYTES:
        raise PasswdError(f"{what} is larger than the {MAX_BYTES >> 20} MiB bound")
    lines = bytes(data).split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if len(lines) > MAX_LINES:
        raise PasswdError(f"{what} has more than the {MAX_LINES} lines bound")
    for number, raw in enumerate(lines, 1):
        if len(raw) > MAX_LINE:
            raise PasswdError(f"{what} line {number} is longer than the {MAX_LINE}-byte bound")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            refused.append(f"line {number}: not UTF-8")
            continue
        if _CONTROL_RE.search(line):
            refused.append(f"line {number}: control character")
            continue
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != width:
            refused.append(f"line {number}: {len(fields)} fields, {what} has {width}")
            continue
        yield number, fields


def _id(text: str, what: str) -> int | str:
    """The id, or why it is refused."""
    if text.startswith("-") and _DECIMAL_RE.fullmatch(text[1:]):
        return f"{what} is negative"
    if not _DECIMAL_RE.fullmatch(text):
        return f"{what} is not a plain base-10 integer"
    if len(text.lstrip("0")) > 10 or int(text) > UID_MAX:
        return f"{what} is over {UID_MAX} (2^31-1)"
    return int(text)


def _name_problem(name: str) -> str | None:
    if not name:
        return "name is empty"
    if not name.isprintable():
        return "name is not printable"
    if len(name) > NAME_MAX:
        return f"name is longer than {NAME_MAX} characters"
    return None


def shadowed_by(data: bytes, name: str, before: int | None) -> int | None:
    """The number of a line this module refused (or skipped) that names `name` and comes
    before line `before` (None: anywhere), or None. Runtimes read passwd leniently
    (moby/sys/user trims spaces, tolerates missing or extra fields, reads "+0" as 0), so
    such a line may be the one a container's `USER name` resolves to: its uid is then not
    known here."""
    for number, raw in enumerate(bytes(data[:MAX_BYTES]).split(b"\n")[:MAX_LINES], 1):
        if before is not None and number >= before:
            break
        first = raw.split(b":", 1)[0].strip(b" \t\r\n\x00")
        if first == name.encode("utf-8", "replace"):
            return number
    return None


def lookup(entries: list[Entry], name: str) -> Entry | None:
    """The first account named `name`, as getpwnam() finds it (names are case-sensitive)."""
    return next((e for e in entries if e.name == name), None)


def fitting_user(entries: list[Entry], image_repository: str) -> Entry | None:
    """An existing non-root account fit to run the image's application: the one named like
    the repository's last component (library/nginx -> nginx) if its uid is 1..2^31-1 and
    not nobody's; else the regular account (uid 1000..65533) with the lowest uid; else
    None. Never root, never nobody."""
    last = image_repository.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    named = lookup(entries, last) if last else None
    if named is not None and 1 <= named.uid <= UID_MAX and named.uid != NOBODY:
        return named
    regular = [e for e in entries if REGULAR_MIN <= e.uid < NOBODY]
    return min(regular, key=lambda e: e.uid) if regular else None  # min keeps file order


def os_family(os_release: bytes | None) -> str | None:
    """ "alpine", "debian" (Debian, Ubuntu) or "rhel" (RHEL, Fedora, CentOS, Rocky, Alma,
    Amazon Linux) from os-release's ID, then its ID_LIKE in order; None when unknown,
    absent, or larger than OS_RELEASE_MAX."""
    if not os_release or len(os_release) > OS_RELEASE_MAX:
        return None
    values: dict[str, str] = {}
    for line in os_release.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("ID", "ID_LIKE"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key] = value  # the last assignment wins, as in a shell
    candidates = [values.get("ID", "")] + values.get("ID_LIKE", "").split()[:16]
    for word in candidates:
        word = word.strip().lower()
        if _OS_ID_RE.fullmatch(word) and word in FAMILIES:
            return FAMILIES[word]
    return None


def create_user_line(family: str | None, uid: int) -> list[str]:
    """The Dockerfile lines that create a user `app` with this numeric uid, for the family
    (os_family); for an unknown family (None) both variants, each after a comment naming
    it. The caller adds `USER {uid}`."""
    if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= UID_MAX:
        raise ValueError(f"uid must be an integer in 1..{UID_MAX}")
    busybox = f"RUN adduser -D -H -u {uid} app"
    shadow = f"RUN useradd --system --no-create-home --uid {uid} app"
    if family == "alpine":
        return [busybox]
    if family in ("debian", "rhel"):
        return [shadow]
    if family is None:
        return ["# Alpine/BusyBox:", busybox, "# Debian, Ubuntu, RHEL:", shadow]
    raise ValueError(f"unknown family {family!r} (alpine, debian, rhel or None)")
