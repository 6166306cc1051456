"""A log file handler that survives a full disk.

:class:`FallbackFileHandler` writes to the node's log file; when a write
fails (``ENOSPC``, a vanished folder) it says so once on stderr and sends
the records there instead, trying the file again every ``retry_s`` seconds.
The plain :class:`logging.FileHandler` would print a traceback to stderr for
every record (an error storm that hides the one message that matters).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path


class FallbackFileHandler(logging.Handler):
    """Append records to ``path``; fall back to stderr while it cannot be written.

    Parameters
    ----------
    path
        The log file (its folder is created when missing).
    retry_s
        Seconds between attempts to go back to the file after a failure.
    """

    def __init__(self, path: Path, *, retry_s: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.retry_s = retry_s
        self._file: logging.FileHandler | None = None
        self._failing = False
        self._failed_at = 0.0
        self._stderr = logging.StreamHandler(sys.stderr)
        self._open()

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        """Use ``fmt`` for the file and for the stderr fallback."""
        super().setFormatter(fmt)
        self._stderr.setFormatter(fmt)
        if self._file is not None:
            self._file.setFormatter(fmt)

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path, encoding="utf-8")
        except OSError as err:
            self._fail(err)
            return False
        handler.setFormatter(self.formatter)
        self._file = handler
        return True

    def _fail(self, err: OSError) -> None:
        if not self._failing:
            sys.stderr.write(
                f"contourd: cannot write the log file {self.path} ({err}); logging to "
                f"stderr until it can be written again (retried every {self.retry_s:g} s)\n"
            )
        self._failing = True
        self._failed_at = time.monotonic()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the file, or to stderr while the file fails."""
        if self._file is None and time.monotonic() - self._failed_at >= self.retry_s:
            self._open()
        if self._file is not None:
            try:
                stream = self._file.stream
                if stream is None:  # closed by logging.shutdown
                    raise OSError("the log file is closed")
                stream.write(self._file.format(record) + self._file.terminator)
                stream.flush()
            except OSError as err:
                self._fail(err)
            else:
                if self._failing:
                    self._failing = False
                    sys.stderr.write(f"contourd: logging to {self.path} again\n")
                return
        self._stderr.emit(record)

    def close(self) -> None:
        """Close the file (if open)."""
        self._close_file()
        super().close()
