"""The HTTP API's per-user tokens: issued by `swarm user token`, kept only as sha256 digests.

A user of a `swarm up` stack (`swarm.devstack.principals.add_user`) may hold one API token,
which the HTTP API maps to that user: it signs the request's commands with the user's key, so
the Hive applies the user's roles (`swarm.gateway.service`). The owner's token
(`<data dir>/api-token`) is not one of these and is not kept here.

* **Shape.** `swarm_` and 43 letters and digits drawn by `secrets` (~256 bits): the prefix
  makes a leaked token greppable (`swarm_[A-Za-z0-9]{43}`), as `ghp_` does GitHub's, and tells
  it apart from the owner's token; letters and digits alone select whole with a double click.
* **Storage.** `<data dir>/principals/api-tokens.json` (0600, in the 0700 principals dir,
  replaced whole so a reader never sees half a file): per user, the sha256 of its token, a
  hint (`swarm_…` and its last 4 characters, to tell tokens apart in `swarm user ls`) and when
  it was issued. The token itself is printed once and kept nowhere. A fast hash is enough: the
  token is random, so there is no dictionary to try, and a stolen file yields no token.
* **One per user.** Issuing a token replaces the user's previous one, which is refused from
  then on; `revoke_token` removes it, and `swarm user rm` does with the user.
* **Reading.** `TokenBook` (the HTTP API) finds a token's user by its digest, reading the file
  again whenever it changed (as `principals.Roster` does the principals), so a token issued or
  revoked counts at the next request, without a restart. A dict lookup by digest takes time
  that depends on the digest of what was sent, not on any stored token, so it leaks nothing a
  constant-time comparison would hide.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import string
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from swarm.devstack.embedded import private_fd
from swarm.devstack.principals import users

#: The file, in the principals' directory, that lists the tokens' digests.
TOKENS: Final = "api-tokens.json"
#: What every user token begins with.
PREFIX: Final = "swarm_"
_ALPHABET: Final = string.ascii_letters + string.digits
#: 62**43 > 2**256.
_LENGTH: Final = 43
_SHAPE: Final = re.compile(rf"{PREFIX}[A-Za-z0-9]{{{_LENGTH}}}")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """What is kept of one user's token."""

    user: str
    sha256: str
    #: `swarm_…` and the token's last 4 characters: enough to tell tokens apart, not to guess.
    hint: str
    #: When it was issued (RFC 3339, UTC).
    issued_at: str


def is_token_shaped(text: str) -> bool:
    """Whether `text` has the shape of a user token (`swarm_` and 43 letters and digits)."""
    return _SHAPE.fullmatch(text) is not None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(directory: Path, user: str) -> str:
    """A new token for `user` (a user of the principals in `directory`), replacing the one it
    had; the token is returned, to be shown once, and only its digest is kept. ValueError when
    there is no such user."""
    if not any(u.name == user for u in users(directory)):
        raise ValueError(f"no user named {user!r}")
    token = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
    entry = TokenEntry(
        user,
        digest(token),
        f"{PREFIX}…{token[-4:]}",
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    kept = [e for e in tokens(directory) if e.user != user]
    _write(directory, [*kept, entry])
    return token


def revoke_token(directory: Path, user: str) -> bool:
    """`user`'s token removed: refused from then on. False when it held none."""
    listed = tokens(directory)
    kept = [e for e in listed if e.user != user]
    if len(kept) == len(listed):
        return False
    _write(directory, kept)
    return True


def tokens(directory: Path) -> list[TokenEntry]:
    """The tokens issued in `directory` (none when the file is missing)."""
    path = directory / TOKENS
    return list(_load(path).values()) if path.exists() else []


def _load(path: Path) -> dict[str, TokenEntry]:
    """The entries of a tokens file, by digest."""
    out = {}
    for item in json.loads(path.read_text()):
        entry = TokenEntry(
            str(item["user"]), str(item["sha256"]), str(item["hint"]), str(item["issued_at"])
        )
        out[entry.sha256] = entry
    return out


def _write(directory: Path, entries: list[TokenEntry]) -> None:
    fresh = directory / f".{TOKENS}.new"
    fd = private_fd(fresh, os.O_TRUNC)
    os.fchmod(fd, 0o600)  # a leftover from a crash may have had another mode
    with open(fd, "w") as f:
        json.dump([asdict(e) for e in entries], f, indent=2)
    fresh.replace(directory / TOKENS)


class TokenBook:
    """The users' tokens a file lists, by digest, read again whenever the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, TokenEntry] = {}
        self.holder("")  # read now: an unreadable file fails at start, not at a request

    def holder(self, token: str) -> str | None:
        """The user `token` was issued to; None for anything else (revoked, replaced, never
        issued, not a user token at all)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            # No token issued yet (the file is made by the first): none is valid.
            self._stamp, self._entries = None, {}
            return None
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp != self._stamp:
            self._entries = _load(self.path)
            self._stamp = stamp
        if not is_token_shaped(token):
            return None
        entry = self._entries.get(digest(token))
        return entry.user if entry is not None else None


__all__ = [
    "PREFIX",
    "TOKENS",
    "TokenBook",
    "TokenEntry",
    "digest",
    "is_token_shaped",
    "issue_token",
    "revoke_token",
    "tokens",
]
