"""Commands in the guest over SSH (paramiko through the 127.0.0.1 port forward).

The guest's host key is fixed per image and pinned here (RejectPolicy: no blind accept).
Commands run on an exec channel, so kernel messages (which go to the serial console) never mix
into their output; stdout and stderr are read concurrently so neither pipe can stall the other.
"""

from __future__ import annotations

import base64
import contextlib
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.errors import InfrastructureError
from harness.guest.spent import Tally, TimeSpent


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


class GuestStream:
    """A guest command left running on a channel of its own: text goes to its stdin, and its
    output (stdout and stderr merged) arrives as the command writes it. A conversation with a
    long-lived guest process then costs no SSH command per exchange: each would be a new channel,
    a dropbear child and a shell in the guest, under TCG about 40 ms of emulated crypto and forks
    taken from the vCPUs the workload runs on."""

    def __init__(self, command: str, channel: paramiko.Channel, waits: Tally | None = None) -> None:
        self.command = command
        self._channel = channel
        self._received = bytearray()
        self._waits = waits if waits is not None else Tally()

    def send(self, text: str) -> None:
        """Write `text` to the command's stdin."""
        if self._channel.closed or self._channel.eof_received:
            raise GuestCommandError(f"Guest command {self.command!r} has ended; it cannot take {text!r}.")
        self._channel.sendall(text.encode())

    def output(self, wait: float = 0.0) -> str:
        """Everything the command has written so far; first waiting up to `wait` seconds for more
        to arrive when nothing new has (select on the channel: no polling)."""
        if wait > 0 and not self._channel.recv_ready() and not self._channel.eof_received:
            with self._waits.timing():
                select.select([self._channel], [], [], wait)
        while self._channel.recv_ready():
            self._received += self._channel.recv(65536)
        return self._received.decode(errors="replace")

    def ended(self) -> bool:
        """The command's output is closed: it exited, or the guest or its SSH server went away."""
        return bool(self._channel.eof_received) and not self._channel.recv_ready()

    def finish(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the command to exit (its exit status arrived); False
        if it has not. Close the channel only after this: dropbear (2022.83) drops the whole
        connection, every other channel with it, when a client closes a session channel
        whose command is still running and then opens another (seen after 32 of 60 holders
        killed and closed at once)."""
        deadline = time.monotonic() + timeout
        while not self._channel.exit_status_ready():
            left = deadline - time.monotonic()
            if left <= 0 or self._channel.closed:
                return self._channel.exit_status_ready()
            self.output(wait=min(0.25, left))
        return True

    def close(self) -> None:
        self._channel.close()


class SshSession:
    def __init__(self, client: paramiko.SSHClient, spent: TimeSpent | None = None) -> None:
        self.client = client
        # The guest's tallies (GuestView.spent), which outlive this connection.
        self.spent = spent if spent is not None else TimeSpent()

    @classmethod
    def open(cls, port: int, host_key: str, identity: Path, deadline: float,
             alive: Callable[[], None] | None = None, spent: TimeSpent | None = None) -> SshSession:
        """Connect, retrying until `deadline`; `alive` raises when the guest died meanwhile;
        commands and stream waits are tallied in `spent`."""
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
                return cls(client, spent)
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
        with self.spent.commands.timing():
            return self._run(command, timeout, stdin)

    def _run(self, command: str | list[str], timeout: float, stdin: bytes | None) -> CommandResult:
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

    def stream(self, command: str) -> GuestStream:
        """Start `command` on a channel of its own and return at once (GuestStream talks to it)."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestCommandError("The SSH connection to the guest is closed (did the guest die?).")
        try:
            channel = transport.open_session(timeout=10.0)
        except paramiko.SSHException as error:
            raise CommandTimeout(f"Guest command {command!r} could not start within 10 s ({error}); is the guest "
                                 "paused or hung?", "", "") from error
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        return GuestStream(command, channel, self.spent.stream_waits)

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
