"""The manhole's console: Twisted's colored Python REPL, for SSH and telnet sessions.

:class:`Realm` hands every session (an SSH user's shell, a telnet login) a
:class:`Console` with a fresh namespace.
"""
from __future__ import annotations

import os

from twisted.conch import manhole, manhole_ssh
from twisted.conch import telnet as conch_telnet
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.cred import portal as cred_portal
from zope.interface import implementer


class Interpreter(manhole.ManholeInterpreter):
    """Twisted's manhole interpreter, except that a failure it has shown is not also logged.

    A Deferred that reaches the prompt is shown as ``<Deferred #n>`` and then
    ``Deferred #n called back: ...`` or ``Deferred #n failed: ...``; once the
    console has shown a failure, it is handled (the Deferred's result becomes
    None), so the controller's log gets no "Unhandled error in Deferred".
    """

    def _ebDisplayDeferred(self, failure, k, obj):
        super()._ebDisplayDeferred(failure, k, obj)
        return None


class Console(manhole.ColoredManhole):
    """The REPL: Twisted's colored manhole, with a banner and a ``quit()`` that hangs up."""

    def initializeScreen(self):
        self.terminal.reset()
        self.terminal.write(
            f"ipcluster manhole in the controller (pid {os.getpid()}): full access to the process. "
            "help() lists the helpers; Ctrl-D leaves.".encode()
        )
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def connectionMade(self):
        super().connectionMade()
        self.interpreter = Interpreter(self, self.namespace)
        console = self

        class _Quit:
            def __repr__(self):
                return "Use quit() or Ctrl-D to leave the manhole."

            def __call__(self):
                console.terminal.loseConnection()

        self.interpreter.locals["quit"] = _Quit()


class TerminalSession(manhole_ssh.TerminalSession):
    """An SSH shell session on the console: default size without a pty, resizes, EOF hangs up."""

    width, height = 80, 24
    _terminal = None

    def openShell(self, proto):
        self._terminal = self.chainedProtocolFactory()
        self.transportFactory(proto, self._terminal, IConchUser(self.original), self.width, self.height)

    def windowChanged(self, newWindowSize):
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None and self._terminal.terminalProtocol is not None:
            self._terminal.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self):
        if self._terminal is not None:
            self._terminal.loseConnection()


@implementer(cred_portal.IRealm)
class Realm(manhole_ssh.TerminalRealm):
    """Hands out consoles: SSH users and telnet sessions, each with a fresh namespace."""

    sessionFactory = TerminalSession

    def __init__(self, make_namespace) -> None:
        super().__init__()
        self.chainedProtocolFactory = lambda: insults.ServerProtocol(Console, make_namespace())
        self._make_namespace = make_namespace

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IConchUser in interfaces:
            return super().requestAvatar(avatarId, mind, IConchUser)
        if conch_telnet.ITelnetProtocol in interfaces:
            console = conch_telnet.TelnetBootstrapProtocol(insults.ServerProtocol, Console, self._make_namespace())
            return conch_telnet.ITelnetProtocol, console, lambda: None
        raise NotImplementedError(f"no manhole avatar for {interfaces}")

