"""A tar stream with no entries (two zero blocks): unpacked, it just makes its directory."""

EMPTY_TAR = bytes(1024)
