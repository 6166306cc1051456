"""What telling a re-push from a change costs at completion: digest vs sha256sum.

At completion the node digests every instance of the series on disk
(``daemon.series_content.content_digest``: SHA-256 of each data set after its
file meta) to recognise an unchanged re-push. This adds to the time from the
last image to the job. The peer is GNU coreutils ``sha256sum`` over the same
files (whole files, one process), the floor for hashing them from the page
cache.

Usage: ``python benchmarks/series_digest_benchmark.py [--slices 300] [--size 512]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_benchmark import make_series  # noqa: E402

from daemon.series_content import content_digest  # noqa: E402


def _median_s(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    """Print the digest time and sha256sum's over the same series."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns, in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sha256sum = shutil.which("sha256sum")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_series(Path(tmp), args.slices, args.size)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        by_uid = {p.stem: p for p in files}
        content_digest(by_uid)  # warm the page cache
        ours = _median_s(lambda: content_digest(by_uid), args.repeats)
        print(
            f"series: {args.slices} slices of {args.size}x{args.size} int16, {total_mb:.1f} MB "
            f"(page cache warm), median of {args.repeats}"
        )
        print(f"  contourd content_digest   {ours:.3f} s  {total_mb / ours:7.1f} MB/s")
        if sha256sum is None:
            print("  sha256sum not installed (coreutils); no peer figure")
            return 0
        peer = _median_s(
            lambda: subprocess.run(
                [sha256sum, *map(str, files)], check=True, stdout=subprocess.DEVNULL
            ),
            args.repeats,
        )
        print(f"  sha256sum (coreutils)     {peer:.3f} s  {total_mb / peer:7.1f} MB/s")
        print(f"ratio: contourd x{peer / ours:.2f} the speed of sha256sum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
