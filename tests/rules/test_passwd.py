"""An image's /etc/passwd, /etc/group and os-release read as the C library reads them, with
hostile lines refused one by one and bounds on the whole."""

import pytest

from compliance.demo_images import DEBIAN_PASSWD
from compliance.rules import passwd
from compliance.rules.passwd import Entry, GroupEntry, PasswdError

# As in the official images (Debian bookworm base; node, nginx, postgres add their user).
DEBIAN = DEBIAN_PASSWD.encode()
NODE = DEBIAN + b"node:x:1000:1000::/home/node:/bin/bash\n"
NGINX = DEBIAN + b"nginx:x:101:101:nginx user:/nonexistent:/bin/false\n"
POSTGRES = DEBIAN + b"postgres:x:999:999::/var/lib/postgresql:/bin/bash\n"
GROUP = b"root:x:0:\ndaemon:x:1:\nstaff:x:50:\nnode:x:1000:\nnogroup:x:65534:\n"


def parse(text: bytes) -> list[Entry]:
    entries, refused = passwd.parse_passwd(text)
    assert refused == []
    return entries


# --- parsing ---


def test_it_reads_every_account_with_its_line():
    entries = parse(NODE)
    assert len(entries) == 19
    assert entries[0] == Entry("root", 0, 0, 1, "/root", "/bin/bash")
    assert entries[-1] == Entry("node", 1000, 1000, 19, "/home/node", "/bin/bash")


def test_comments_and_blank_lines_are_skipped_but_counted():
    entries = parse(
        b"# made by hand\n\n   \nroot:x:0:0::/root:/bin/sh\n  # indented\napp:x:10:10::/:/bin/sh"
    )
    assert [(e.name, e.line) for e in entries] == [("root", 4), ("app", 6)]


def test_it_reads_groups():
    groups, refused = passwd.parse_group(GROUP)
    assert refused == []
    assert groups[3] == GroupEntry("node", 1000, 4)
    groups, refused = passwd.parse_group(b"ok:x:5:a,b\nbad:x:5\nneg:x:-5:\n")
    assert groups == [GroupEntry("ok", 5, 1)]
    assert refused == ["line 2: 3 fields, group has 4", "line 3: gid is negative"]


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"evil:x:0:0:\x1b[2J:/root:/bin/sh", "control character"),
        (b"evil:x:0:0::/root:/bin/sh\r", "control character"),
        (b"ev\x00il:x:0:0::/root:/bin/sh", "control character"),
        (b"evil:x:0:0:\xe2\x80\xae:/:/bin/sh", "control character"),  # a bidi override
        (b"evil:x:0:0:\xff\xfe:/root:/bin/sh", "not UTF-8"),
        (b"evil:x:2147483648:0::/:/bin/sh", "uid is over 2147483647 (2^31-1)"),
        (b"evil:x:99999999999999999999999:0::/:/bin/sh", "uid is over 2147483647 (2^31-1)"),
        (b"evil:x:-1:0::/:/bin/sh", "uid is negative"),
        (b"evil:x:0x10:0::/:/bin/sh", "uid is not a plain base-10 integer"),
        (b"evil:x:1e3:0::/:/bin/sh", "uid is not a plain base-10 integer"),
        (b"evil:x: 5:0::/:/bin/sh", "uid is not a plain base-10 integer"),
        (b"evil:x::0::/:/bin/sh", "uid is not a plain base-10 integer"),
        ("evil:x:\u0661:0::/:/bin/sh".encode(), "uid is not a plain base-10 integer"),
        (b"evil:x:5:2147483648::/:/bin/sh", "gid is over 2147483647 (2^31-1)"),
        (b"evil:x:0:0::/root:/bin/sh:extra", "8 fields, passwd has 7"),
        (b"evil:x:0:0", "4 fields, passwd has 7"),
        (b":x:0:0::/:/bin/sh", "name is empty"),
        (b"a" * 33 + b":x:5:5::/:/bin/sh", "name is longer than 32 characters"),
        ("ev\u00a0il:x:5:5::/:/bin/sh".encode(), "name is not printable"),
    ],
)
def test_a_hostile_line_is_refused_and_the_rest_kept(line, reason):
    entries, refused = passwd.parse_passwd(
        b"root:x:0:0::/root:/bin/sh\n" + line + b"\nnode:x:1000:1000::/:/bin/sh\n"
    )
    assert refused == [f"line 2: {reason}"]
    assert [(e.name, e.line) for e in entries] == [("root", 1), ("node", 3)]


def test_the_largest_uid_is_accepted_and_leading_zeros_are_decimal():
    entries = parse(b"big:x:2147483647:0::/:/bin/sh\nzero:x:0010:010::/:/bin/sh\n")
    assert [(e.uid, e.gid) for e in entries] == [(2147483647, 0), (10, 10)]


def test_the_bounds_refuse_the_whole_file():
    with pytest.raises(PasswdError, match="larger than the 1 MiB bound"):
        passwd.parse_passwd(b"a" * (passwd.MAX_BYTES + 1))
    with pytest.raises(PasswdError, match="line 2 is longer than the 4096-byte bound"):
        passwd.parse_passwd(b"root:x:0:0::/:/bin/sh\n" + b"x" * 4097 + b"\n")
    with pytest.raises(PasswdError, match="more than the 10000 lines bound"):
        passwd.parse_group(b"\n" * 10_001)
    assert isinstance(PasswdError("x"), ValueError)
    # exactly at the bounds is fine
    assert passwd.parse_passwd(b"#" + b"x" * 4095 + b"\n")[1] == []
    assert passwd.parse_passwd(b"\n" * 10_000) == ([], [])


def test_refusals_do_not_quote_the_file():
    _, refused = passwd.parse_passwd(
        b"\x1b]0;pwned\x07:x:0:0::/:/bin/sh\nroot:x:abc\x1b:0::/:/bin/sh\n"
    )
    assert refused == ["line 1: control character", "line 2: control character"]


# --- lookups ---


def test_lookup_finds_the_first_match_case_sensitively():
    entries = parse(b"app:x:10:10::/:/bin/sh\nApp:x:11:11::/:/bin/sh\napp:x:12:12::/:/bin/sh\n")
    assert passwd.lookup(entries, "app").uid == 10  # as getpwnam: the first
    assert passwd.lookup(entries, "App").uid == 11
    assert passwd.lookup(entries, "APP") is None
    assert passwd.lookup(parse(NODE), "node").uid == 1000


@pytest.mark.parametrize(
    "text,repository,expected",
    [
        (NGINX, "library/nginx", ("nginx", 101)),
        (NODE, "library/node", ("node", 1000)),
        (POSTGRES, "library/postgres", ("postgres", 999)),
        (NODE, "acme/shop", ("node", 1000)),  # no user named so: the regular account
        (NGINX, "docker.io/library/nginx:1.27", ("nginx", 101)),
        (POSTGRES, "bitnami/postgresql", None),  # postgres 999 is a system account
        (DEBIAN, "library/debian", None),  # no regular account, and never nobody
        (DEBIAN, "library/nobody", None),
        (DEBIAN, "library/root", None),
    ],
)
def test_fitting_user(text, repository, expected):
    user = passwd.fitting_user(parse(text), repository)
    assert (user and (user.name, user.uid)) == expected


def test_fitting_user_prefers_the_lowest_regular_uid():
    entries = parse(
        b"b:x:1002:1::/:/bin/sh\na:x:1001:1::/:/bin/sh\nc:x:1001:1::/:/bin/sh\nn:x:65534:1::/:/bin/sh\nhuge:x:70000:1::/:/bin/sh\n"
    )
    assert passwd.fitting_user(entries, "x/y").name == "a"  # the lowest, the first of equals
    assert (
        passwd.fitting_user(parse(b"n:x:65534:1::/:/bin/sh\nhuge:x:70000:1::/:/bin/sh\n"), "x/y")
        is None
    )
    assert passwd.fitting_user(parse(b"huge:x:70000:1::/:/bin/sh\n"), "x/huge").uid == 70000


# --- os-release ---


@pytest.mark.parametrize(
    "text,family",
    [
        (b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "debian"),
        (b'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', "debian"),
        (b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n', "alpine"),
        (b'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\n', "rhel"),
        (b'ID="rocky"\nID_LIKE="rhel centos fedora"\n', "rhel"),
        (b'ID="almalinux"\nID_LIKE="rhel centos fedora"\n', "rhel"),
        (b'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="fedora"\n', "rhel"),
        (b"ID=fedora\n", "rhel"),
        (b"ID=centos\n", "rhel"),
        (b'ID=linuxmint\nID_LIKE="ubuntu debian"\n', "debian"),
        (b'ID="ol"\nID_LIKE="fedora"\n', "rhel"),
        (b"ID=wolfi\n", None),
        (b'ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', None),
        (b"NAME=nothing\n", None),
        (b"", None),
        (None, None),
        (b"ID=debian\x1b[2J\n", None),
        (b"ID=" + b"a" * 100 + b"\n", None),
        (b"ID=\xff\xfe\nID_LIKE=alpine\n", "alpine"),
        (b"ID=debian\n" + b"#" * passwd.OS_RELEASE_MAX, None),  # over the bound
    ],
)
def test_os_family(text, family):
    assert passwd.os_family(text) == family


# --- Dockerfile lines ---


def test_create_user_line():
    assert passwd.create_user_line("alpine", 10001) == ["RUN adduser -D -H -u 10001 app"]
    shadow = ["RUN useradd --system --no-create-home --uid 10001 app"]
    assert passwd.create_user_line("debian", 10001) == shadow
    assert passwd.create_user_line("rhel", 10001) == shadow
    assert passwd.create_user_line(None, 10001) == [
        "# Alpine/BusyBox:",
        "RUN adduser -D -H -u 10001 app",
        "# Debian, Ubuntu, RHEL:",
        "RUN useradd --system --no-create-home --uid 10001 app",
    ]
    for uid in (0, -1, 2147483648, True, "1000"):
        with pytest.raises(ValueError):
            passwd.create_user_line("debian", uid)
    with pytest.raises(ValueError, match="unknown family"):
        passwd.create_user_line("suse", 1000)
