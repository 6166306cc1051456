"""The nnU-Net test models, trained in the background from the start of the session.

Training the two real nnU-Net models that ``tests/nnunet`` needs
(``nnunet/make_nnunet_model.py``: a CT model with folds 0 and 1, an MR model
with fold 0) is about seven minutes of CPU. Trained in the foreground, inside
the first test that asks for them, that is seven minutes of wall time in which
the rest of the suite waits. So the root ``conftest.py`` starts both trainings
as soon as collection has finished, as niced subprocesses (two threads for
the CT model, the longer one, one for the MR model), and moves the
``tests/nnunet`` tests to the end of the run: they train while the other tests
run (many of which wait on peers and subprocesses), and the fixtures collect
the finished folders with :func:`ModelBuilds.result`. The trainings themselves
are unchanged, so the tests see the same models.

Outside CI the environment variables named in :data:`BUILDS` may point at
trained-model folders made earlier with the same arguments; they are copied
instead of trained.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "nnunet" / "make_nnunet_model.py"


@dataclass(frozen=True)
class Build:
    """One model: the cache variable that may name a folder made earlier, the script's
    arguments, the fixture that asks for it and the torch threads it trains with."""

    cache_variable: str
    args: tuple[str, ...]
    fixture: str
    threads: int


BUILDS: dict[str, Build] = {
    # Fold 1 trains half as long: only the two-fold ensemble and the import of fold 1
    # alone use it, and both compare contourd with nnU-Net on the same weights.
    "ct": Build(
        "CONTOURD_NNUNET_TEST_MODEL",
        ("--folds", "0", "1", "--iterations", "30", "15"),
        "trained",
        2,
    ),
    "mr": Build(
        "CONTOURD_NNUNET_TEST_MR_MODEL",
        ("--folds", "0", "--iterations", "30", "--modality", "MR"),
        "mr_trained",
        1,
    ),
}

#: Seconds to wait for one training (its subprocess is killed after that). The
#: tests that wait for a model have a pytest timeout above it (their module's mark).
TIMEOUT_S = 1500


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


class ModelBuilds:
    """The session's model trainings, started once and collected by name."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._running: dict[str, _Running] = {}

    @staticmethod
    def cached(name: str) -> Path | None:
        """The trained-model folder a developer named for ``name``, outside CI."""
        cached = os.environ.get(BUILDS[name].cache_variable)
        return Path(cached) if cached and not os.environ.get("CI") else None

    def start(self, names: set[str], niceness: int = 10) -> None:
        """Start the trainings of ``names`` (those not cached and not yet started), each
        with its :attr:`Build.threads`, at ``niceness`` (so the foreground tests come first)."""
        for name in sorted(names):
            if name in self._running or self.cached(name) is not None:
                continue
            threads = BUILDS[name].threads
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="contourd-nnunet-models-"))
            work = self._root / name
            work.mkdir()
            stdout, stderr = self._root / f"{name}.out", self._root / f"{name}.err"
            env = {
                **os.environ,
                "nnUNet_n_proc_DA": "0",
                "OMP_NUM_THREADS": str(threads),
            }
            command = [sys.executable, str(SCRIPT), str(work), "--threads", str(threads)]
            with stdout.open("wb") as out, stderr.open("wb") as err:
                process = subprocess.Popen(
                    ["nice", "-n", str(niceness), *command, *BUILDS[name].args],
                    stdout=out,
                    stderr=err,
                    env=env,
                )
            self._running[name] = _Running(process, stdout, stderr)

    def result(self, name: str, copy_to: Path) -> Path:
        """The trained-model folder of ``name``: waits for its training (starting it
        now, with its threads and not niced, if nothing started it); a cached folder
        is copied to ``copy_to``.

        Raises
        ------
        AssertionError
            The training failed or timed out; the message holds the end of its output.
        """
        cached = self.cached(name)
        if cached is not None:
            copy = copy_to / "cached" / cached.name
            shutil.copytree(cached, copy)
            return copy
        if name not in self._running:
            self.start({name}, niceness=0)
        running = self._running[name]
        try:
            code = running.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            running.process.kill()
            code = running.process.wait()
        output = running.stdout.read_text(errors="replace")
        errors = running.stderr.read_text(errors="replace")
        assert code == 0 and output.strip(), (
            f"training {name} exited with {code}:\n{output[-3000:]}\n{errors[-3000:]}"
        )
        return Path(output.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill what still runs and remove the work folders."""
        for running in self._running.values():
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait()
        self._running.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


#: The one instance of the session (the root conftest starts and stops it).
SESSION_BUILDS = ModelBuilds()
