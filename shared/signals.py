"""The signals that stop an edgeplane process cleanly: SIGTERM, SIGINT (Ctrl-C) and SIGHUP
(the terminal went away: a closed SSH session). A SIGHUP that the process was started
ignoring (``nohup``) stays ignored: whoever started it asked for that."""

from __future__ import annotations

import signal

__all__ = ["stop_signals"]


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals to stop on, as the process stands now (look before taking them over)."""
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hangup)
