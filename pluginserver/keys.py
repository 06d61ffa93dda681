# -*- test-case-name: tests.test_keys -*-
"""
API keys as the server keeps them: SHA-256 digests, never the keys.

A key is configured in one of four forms, anywhere a key is configured
(C{[auth] apikey}, C{[auth] admin_apikey}, a plugin's C{apikey=}):

  - a plain value, hashed as it is read;
  - C{sha256:<64 hex digits>}, the digest itself (the plain key never
    reaches the server);
  - C{file:PATH}, the file's content, stripped (refused when the file is
    readable by its group or by others);
  - a C{list:} of any of these: several keys valid at once, for rotation.

A presented key is hashed once and compared with every digest in constant
time.  A key is named in logs by its id: the first 8 hex digits of its
SHA-256, never the key or the whole digest.

This module knows nothing of Twisted or of the configuration format.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Iterable
from typing import Any

import attr

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

KEY_ID_LENGTH = 8
"""Hex digits of a key's SHA-256 that name it in logs."""


def key_id(key: str) -> str:
    """
    The id of a key: the first 8 hex digits of its SHA-256.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:KEY_ID_LENGTH]


@attr.s(frozen=True, slots=True, repr=False, auto_attribs=True)
class KeySet:
    """
    The keys one place accepts, as SHA-256 digests.

    Its repr says how many keys it holds and nothing else: settings get
    logged, and neither a key nor its digest may be.

    @ivar digests: the digests, in the order configured.
    """

    digests: tuple[bytes, ...]

    def match(self, given: str | None) -> str | None:
        """
        The id of the key C{given} is, or L{None} when it is none of them
        (or L{None}).  Every digest is compared, in constant time, whatever
        matched: timing does not tell which key, or how much of one, matched.
        """
        if given is None:
            return None
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        found = None
        for candidate in self.digests:
            if hmac.compare_digest(digest, candidate):
                found = candidate
        return None if found is None else found.hex()[:KEY_ID_LENGTH]

    def __add__(self, other: KeySet) -> KeySet:
        return KeySet(self.digests + tuple(d for d in other.digests if d not in self.digests))

    def __len__(self) -> int:
        return len(self.digests)

    def __bool__(self) -> bool:
        return bool(self.digests)

    @property
    def ids(self) -> tuple[str, ...]:
        """
        The id of every key, in the order configured.
        """
        return tuple(d.hex()[:KEY_ID_LENGTH] for d in self.digests)

    def __repr__(self) -> str:
        return f"<KeySet of {len(self.digests)} key(s)>"

    @classmethod
    def of(cls, *keys: str) -> KeySet:
        """
        The set of these plain keys.
        """
        return cls(tuple(hashlib.sha256(k.encode("utf-8")).digest() for k in keys))


def read_key_file(path: str) -> str:
    """
    The key in the file at C{path}: its content, stripped.

    @raise ValueError: the file cannot be read, is readable by its group
        or by others, or is empty.  The message names the file, never its
        content.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                raise ValueError(
                    f"key file {path} is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
                )
            data = f.read()
    except OSError as e:
        raise ValueError(f"key file {path}: cannot read: {e.strerror or e}") from None
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"key file {path} is not UTF-8 text") from None
    if not key:
        raise ValueError(f"key file {path} is empty")
    return key


def parse_keys(value: Any, base_dir: str) -> KeySet | None:
    """
    The keys a configured value gives: a string in any key form, or a list
    of them (from C{list:}); L{None} when empty.  C{file:} names resolve
    against C{base_dir}; C{~} expands.

    @raise ValueError: a form is malformed, or a file unusable; the
        message never shows a key.
    """
    if value is None:
        return None
    if isinstance(value, KeySet):
        return value or None
    items: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
    digests: list[bytes] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(
                "expected keys: plain, sha256:<64 hex>, file:PATH or a list: of them "
                "(value not shown)"
            )
        item = item.strip()
        if not item:
            continue
        if item.startswith("sha256:"):
            hexdigits = item[len("sha256:") :].strip()
            if not _HEX64.fullmatch(hexdigits):
                raise ValueError(
                    f"sha256: must be followed by 64 hex digits, found {len(hexdigits)} "
                    "characters (value not shown)"
                )
            digest = bytes.fromhex(hexdigits)
        elif item.startswith("file:"):
            name = item[len("file:") :].strip()
            if not name:
                raise ValueError("file: must be followed by a file name")
            path = os.path.abspath(os.path.join(base_dir, os.path.expanduser(name)))
            digest = hashlib.sha256(read_key_file(path).encode("utf-8")).digest()
        else:
            digest = hashlib.sha256(item.encode("utf-8")).digest()
        if digest not in digests:
            digests.append(digest)
    return KeySet(tuple(digests)) if digests else None


def as_keys(value: Any) -> KeySet | None:
    """
    A key setting as a L{KeySet}: one already made, a plain key (as tests
    and L{pluginserver.testing} give), or L{None}.  Key forms in a plain
    string are read relative to the current directory.
    """
    if value is None or isinstance(value, KeySet):
        return value or None
    return parse_keys(value, os.getcwd())
