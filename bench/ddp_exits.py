"""Exit codes of many tiny 2-process runs: a hunt for a rank that aborts at exit.

Issue 11 saw, about once in 20 launches, a second rank leave with exit code 134 and
"terminate called without an active exception" on stderr (a C++ ``std::thread`` destroyed
while still joinable, typical of a gloo process group torn down by the interpreter's exit
instead of ``destroy_process_group()``). This script launches the same tiny recipe (the one of
``tests/test_resume_exact.py``) with ``gan-pipe run --nproc 2`` again and again, one thread per
process, and tallies the exit codes and every stderr line that tells of an abort. The stderr
of every launch that did not exit 0 is kept under ``--keep``.

    python bench/ddp_exits.py                         # 30 launches, 6 steps each
    python bench/ddp_exits.py --launches 50 --set data.stream=true --set data.workers=2
    python bench/ddp_exits.py --interrupt 2.5         # SIGINT each launch after 2.5 s
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_resume_exact import RECIPE  # noqa: E402

#: stderr lines that tell of a process that aborted rather than exited
ABORTS = ("terminate called", "Aborted", "core dumped", "SIGABRT", "exitcode: -6", "Signal 6")


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", GAN_PIPE_STRICT_PLUGINS="0")
    return env


def launch(where: Path, sets: list[str], interrupt: float | None) -> tuple[int, str, float]:
    """One ``gan-pipe run --nproc 2``: (exit code, stderr, seconds)."""
    cmd = [sys.executable, "-m", "gan_pipe", "run", "tiny.toml", "--nproc", "2"]
    cmd += [f"--set={s}" for s in sets]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=where,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if interrupt is not None:
        try:
            proc.wait(timeout=interrupt)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launches", type=int, default=30)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--interrupt", type=float, default=None, metavar="SECONDS")
    ap.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "ddp-exits")
    args = ap.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    sets = [f"train.steps={args.steps}", *args.sets]
    codes: collections.Counter[int] = collections.Counter()
    aborts: collections.Counter[str] = collections.Counter()
    times, aborted = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        (where / "tiny.toml").write_text(RECIPE, encoding="utf-8")
        for i in range(args.launches):
            code, err, seconds = launch(where, sets, args.interrupt)
            codes[code] += 1
            times.append(seconds)
            found = [line for line in err.splitlines() if any(a in line for a in ABORTS)]
            aborted += bool(found)
            for line in found:
                aborts[line.strip()[:100]] += 1
            if code not in (0, 130) or found:
                (args.keep / f"launch-{i:03d}-exit-{code}.txt").write_text(err)
            print(
                f"launch {i + 1:3d}: exit {code:3d}  {seconds:5.1f} s"
                + (f"  ABORT: {found[0][:80]}" if found else ""),
                flush=True,
            )
    print(
        f"\n{args.launches} launches of {' '.join(sets)}"
        + (f", SIGINT after {args.interrupt} s" if args.interrupt else "")
    )
    print("exit codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    print(f"launches with an abort line on stderr: {aborted}")
    for line, n in aborts.most_common():
        print(f"  {n:3d} x {line}")
    print(f"median launch {sorted(times)[len(times) // 2]:.1f} s; stderr kept in {args.keep}")


if __name__ == "__main__":
    main()
