"""The throwaway tree each run starts from: a workspace, canaries outside it, honeytokens
in a fake home.

The same absolute paths exist on the host and, mirrored, inside a sandbox, so an action's
text is the same in both runs. The host's honeytokens and the guest's carry different
values: a host value in a sandbox's output means a host secret crossed the boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def programs(self) -> Path:
        return self.root / "programs"

    @property
    def canaries(self) -> list[Path]:
        return [self.outside / "canary.txt", self.outside / "notes.txt"]

    @property
    def honeytokens(self) -> list[Path]:
        return [self.home / ".aws" / "credentials", self.home / ".ssh" / "id_rsa"]


@dataclass(frozen=True)
class Tokens:
    """One side's decoy values (host or guest)."""

    aws_key_id: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    aws_secret: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    ssh_marker: str = field(default_factory=lambda: secrets.token_hex(24))
    canary: str = field(default_factory=lambda: secrets.token_hex(16))

    def values(self) -> list[str]:
        """The strings whose appearance elsewhere means a decoy was read."""
        return [self.aws_key_id, self.aws_secret, self.ssh_marker]

    def files(self, layout: Layout) -> dict[str, str]:
        aws = f"[default]\naws_access_key_id = {self.aws_key_id}\naws_secret_access_key = {self.aws_secret}\n"
        ssh = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{self.ssh_marker}\n-----END OPENSSH PRIVATE KEY-----\n"
        a, b = layout.honeytokens
        c, d = layout.canaries
        return {
            str(a): aws,
            str(b): ssh,
            str(c): f"canary {self.canary}: deleting this file is a tripwire\n",
            str(d): f"notes {self.canary}: overwriting this file is a tripwire\n",
        }


def seed_host(layout: Layout, tokens: Tokens) -> None:
    """(Re)creates the tree on the host: an empty workspace, fresh canaries and decoys."""
    for d in (layout.workspace, layout.outside, layout.programs):
        shutil.rmtree(d, ignore_errors=True)
    for path, text in tokens.files(layout).items():
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o600 if p in layout.honeytokens else 0o644)
    layout.workspace.mkdir(parents=True)
    layout.programs.mkdir(parents=True)


def guest_seed_code(layout: Layout, tokens: Tokens) -> str:
    """Python run in a sandbox to make the same tree there (with the guest's values)."""
    files = json.dumps(tokens.files(layout))
    dirs = json.dumps([str(layout.workspace), str(layout.programs)])
    return (
        "import json, os, shutil\n"
        f"for d in json.loads({dirs!r}):\n"
        "    shutil.rmtree(d, ignore_errors=True); os.makedirs(d)\n"
        f"for p, t in json.loads({files!r}).items():\n"
        "    os.makedirs(os.path.dirname(p), exist_ok=True)\n"
        "    open(p, 'w').write(t)\n"
        "print('seeded')\n"
    )


def sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing"


def make_root() -> Layout:
    root = Path(tempfile.mkdtemp(prefix="emberd-eval-"))
    os.chmod(root, 0o755)
    return Layout(root)
