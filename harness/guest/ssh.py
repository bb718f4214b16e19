"""Commands in the guest over SSH (paramiko through the 127.0.0.1 port forward).

The guest's host key is fixed per image and pinned here (RejectPolicy: no blind accept).
Commands run on an exec channel, so kernel messages (which go to the serial console) never mix
into their output; stdout and stderr are read concurrently so neither pipe can stall the other.
"""

from __future__ import annotations

import base64
import contextlib
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.errors import InfrastructureError


class GuestCommandError(InfrastructureError):
    """A guest command failed, timed out, or SSH could not connect."""


class CommandTimeout(GuestCommandError):
    def __init__(self, message: str, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> CommandResult:
        if self.exit_status != 0:
            raise GuestCommandError(
                f"Guest command {self.command!r} exited {self.exit_status}: {self.stderr.strip()[-800:]}"
            )
        return self


class SshSession:
    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client

    @classmethod
    def open(cls, port: int, host_key: str, identity: Path, deadline: float,
             alive: Callable[[], None] | None = None) -> SshSession:
        """Connect, retrying until `deadline`; `alive` raises when the guest died meanwhile."""
        key_type, key_b64 = host_key.split()[:2]
        pinned = paramiko.Ed25519Key(data=base64.b64decode(key_b64))
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            client = paramiko.SSHClient()
            client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, pinned)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    "127.0.0.1", port=port, username="root", key_filename=str(identity),
                    look_for_keys=False, allow_agent=False, timeout=5, banner_timeout=10, auth_timeout=10,
                )
                return cls(client)
            except paramiko.BadHostKeyException as err:
                client.close()
                raise GuestCommandError(
                    f"The guest on 127.0.0.1:{port} presented a host key that is not the image's pinned "
                    f"key: {err}. Something else answers on that port; nothing was sent to it."
                ) from err
            except (OSError, paramiko.SSHException, EOFError) as err:
                last_error = err
                client.close()
                time.sleep(0.1)
        raise GuestCommandError(f"SSH to the guest on 127.0.0.1:{port} did not connect in time: {last_error}")

    def run(self, command: str | list[str], timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run a command (a shell string, or argv that is quoted for the guest's shell)."""
        text = command if isinstance(command, str) else shlex.join(command)
        started = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestCommandError("The SSH connection to the guest is closed (did the guest die?).")
        try:
            channel = transport.open_session(timeout=max(0.5, min(10.0, timeout)))
        except paramiko.SSHException as error:
            # A paused or wedged guest does not even open a channel: that is a timeout too.
            raise CommandTimeout(
                f"Guest command {text!r} could not start within {timeout:.0f} s ({error}); is the guest paused or hung?",
                "", "",
            ) from error
        channel.settimeout(0.0)
        channel.exec_command(text)
        if stdin is not None:
            channel.setblocking(True)
            channel.sendall(stdin)
            channel.shutdown_write()
            channel.setblocking(False)
        else:
            channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = started + timeout
        while True:
            progressed = False
            while channel.recv_ready():
                out += channel.recv(65536)
                progressed = True
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
                progressed = True
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                channel.close()
                stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
                raise CommandTimeout(
                    f"Guest command {text!r} did not finish within {timeout:.0f} s. It printed so far:\n"
                    f"stdout: {stdout[-1500:]!r}\nstderr: {stderr[-1500:]!r}",
                    stdout, stderr,
                )
            if not progressed:
                time.sleep(0.005)
        status = channel.recv_exit_status()
        channel.close()
        return CommandResult(text, status, out.decode(errors="replace"), err.decode(errors="replace"),
                             time.monotonic() - started)

    def put(self, data: bytes, path: str, mode: int = 0o644) -> None:
        """Write bytes to a guest file (through `cat`: the guest has no SFTP server)."""
        quoted = shlex.quote(path)
        self.run(f"cat > {quoted}.nh-tmp && chmod {mode:o} {quoted}.nh-tmp && mv {quoted}.nh-tmp {quoted}",
                 stdin=data, timeout=120).check()

    def put_file(self, local: Path, path: str, mode: int | None = None) -> None:
        self.put(local.read_bytes(), path, mode if mode is not None else local.stat().st_mode & 0o777)

    def get(self, path: str) -> bytes:
        result = self.run(f"base64 {shlex.quote(path)}", timeout=120).check()
        return base64.b64decode(result.stdout)

    def poweroff(self) -> None:
        # -f: straight to reboot(RB_POWER_OFF); our /init is a shell that ignores poweroff's signal.
        with contextlib.suppress(Exception):
            transport = self.client.get_transport()
            if transport is not None and transport.is_active():
                channel = transport.open_session(timeout=2)
                channel.exec_command("sync; poweroff -f")

    def close(self) -> None:
        with contextlib.suppress(Exception, socket.error):
            self.client.close()
