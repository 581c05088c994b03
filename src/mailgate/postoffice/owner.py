"""postoffice.owner: who owns what mailgate creates in the postoffice, and its mode.

`[postoffice] owner`, `group` and `mode` (names, as Postfix's virtual_uid_maps and
virtual_gid_maps) decide it, so a reader such as Dovecot, which refuses to serve mail
owned by root, can serve mailboxes the service (root, say) delivers into. `Ownership`
holds the resolved ids; `apply(fd)` gives an open descriptor its owner and mode with
fchown and fchmod, never by path: a name swapped for a symlink after it was created
cannot redirect the change. Directories get the file mode with search (x) added where
read is: 0600 → 0700, 0640 → 0750, 0660 → 0770. The default (the service's own user and
group, 0600) changes nothing, and costs no system call. Giving files to another user
needs root or CAP_CHOWN; `problem()` says when this process lacks it, and `apply` then
fails with a PermissionError that says so.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

MODES = {"0600": 0o600, "0640": 0o640, "0660": 0o660}
CAP_CHOWN = 0  # linux/capability.h


def user_id(name: str) -> int:
    """The uid of user `name`; ValueError if there is none."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ValueError(f"no user {name!r} on this system") from None


def group_id(name: str) -> int:
    """The gid of group `name`; ValueError if there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no group {name!r} on this system") from None


@dataclass(frozen=True, slots=True)
class Ownership:
    uid: int = -1  # -1: the service's own (left as created)
    gid: int = -1
    file_mode: int = 0o600
    label: str = ""  # "owner:group" as configured, for messages

    @classmethod
    def of(cls, owner: str = "", group: str = "", mode: str = "0600") -> Ownership:
        """From the configured names (already validated at load: ValueError otherwise)."""
        uid = user_id(owner) if owner else -1
        gid = group_id(group) if group else -1
        return cls(uid, gid, MODES[mode], f"{owner or '-'}:{group or '-'}")

    @property
    def dir_mode(self) -> int:
        return self.file_mode | ((self.file_mode & 0o444) >> 2)

    @property
    def default(self) -> bool:
        return self.uid == -1 and self.gid == -1 and self.file_mode == 0o600

    def apply(self, fd: int, *, directory: bool = False) -> None:
        """Give the open file or directory `fd` its owner and mode (nothing by default)."""
        if self.default:
            return
        try:
            # The mode first, while the file is still ours: after fchown, changing it would
            # need CAP_FOWNER too.
            os.fchmod(fd, self.dir_mode if directory else self.file_mode)
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
        except PermissionError as exc:
            why = self.problem() or "permission denied"
            raise PermissionError(exc.errno, f"cannot give it to {self.label}: {why}") from None

    def problem(self) -> str | None:
        """Why this process cannot give files to the owner and group, or None."""
        if can_chown():
            return None
        if self.uid not in (-1, os.geteuid()):
            return (
                f"mailgate runs as uid {os.geteuid()} without CAP_CHOWN, and only root may "
                "give files away"
            )
        if self.gid not in (-1, os.getegid(), *os.getgroups()):
            return f"mailgate (uid {os.geteuid()}) is not a member of gid {self.gid}"
        return None


def can_chown() -> bool:
    """Whether this process may give files to any user (root, or CAP_CHOWN, as systemd's
    AmbientCapabilities= grants it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << CAP_CHOWN))
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0
