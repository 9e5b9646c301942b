"""The SSH key pair the harness logs in with (ed25519, OpenSSH format; paramiko loads it)."""

from __future__ import annotations

from pathlib import Path

from tmemh.image.commands import run_command

PRIVATE_KEY_NAME = "id_ed25519"
PUBLIC_KEY_NAME = "id_ed25519.pub"


def generate_key_pair(directory: Path, comment: str = "tmem-harness") -> tuple[Path, Path]:
    private = directory / PRIVATE_KEY_NAME
    run_command("generate ssh key", ["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                                     "-C", comment, "-f", str(private)])
    private.chmod(0o600)
    return private, directory / PUBLIC_KEY_NAME
