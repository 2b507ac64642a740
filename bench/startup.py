"""CLI start-up: ``gan-pipe --help``, ``gan-pipe plugins`` and ``gan-pipe validate`` against
``python -c pass``, measured in one run.

Each command is a fresh subprocess (the ``gan-pipe`` console script beside this Python, run
in a temporary directory with no ``MLFLOW_TRACKING_URI``), output discarded. Repetitions are
interleaved (pass, --help, plugins, validate, pass, ...), so load from other processes falls
on every command alike. Reported: median and minimum wall time of each, and each command's
median minus the interpreter's median, against the goal of issue 11 (under 0.5 s above the
interpreter), plus the load average before and after. The CPU time (user + system, from
``getrusage``) of each command is shown beside its wall time: on a busy machine wall time
grows with the load while CPU time stays near what an idle machine's wall time would be
(start-up is one thread).

With ``--importtime`` each gan-pipe command is then run once more under ``python -X
importtime`` and the top-level packages it imports are listed by cumulative import time (one
run each: indicative, not a median).

    python bench/startup.py                  # 10 reps
    python bench/startup.py --reps 20 --importtime
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.5


def gan_pipe_exe() -> str:
    here = Path(sys.executable).parent / "gan-pipe"
    if here.exists():
        return str(here)
    found = shutil.which("gan-pipe")
    if found is None:
        raise SystemExit("gan-pipe is not installed beside this Python nor on PATH")
    return found


def commands(recipe: str) -> dict[str, list[str]]:
    exe = gan_pipe_exe()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "gan-pipe --help": [exe, "--help"],
        "gan-pipe plugins": [exe, "plugins"],
        "gan-pipe validate": [exe, "validate", recipe],
    }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s: user + system) of one run of ``argv``."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    return dt, cpu


#: Packages a start-up should not need; ``--importtime`` says which of them a command imports.
HEAVY = ("torch", "mlflow", "numpy", "scipy", "sklearn", "pandas", "matplotlib", "PIL")


def importtime(
    argv: list[str], cwd: str, env: dict[str, str], top: int
) -> tuple[list[tuple[str, float]], list[str]]:
    """Modules imported at top level (by the command or its runtime ``import_module``), with
    everything they import, by cumulative import time (s) for one run of a gan-pipe command."""
    code = (
        f"import sys; from gan_pipe.cli import main; sys.argv = {['gan-pipe', *argv[1:]]!r}; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    total: dict[str, float] = defaultdict(float)
    heavy: set[str] = set()
    pattern = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)")
    for line in proc.stderr.splitlines():
        m = pattern.match(line)
        if m is None:
            continue
        if m.group(3).split(".")[0] in HEAVY:
            heavy.add(m.group(3).split(".")[0])
        if not m.group(2):  # imported at top level (not nested in another's import)
            total[m.group(3)] += int(m.group(1)) / 1e6
    return sorted(total.items(), key=lambda kv: -kv[1])[:top], sorted(heavy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10, help="interleaved repetitions")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "dcgan.toml"))
    ap.add_argument("--importtime", action="store_true", help="profile imports of each command")
    ap.add_argument("--top", type=int, default=8, help="packages listed by --importtime")
    args = ap.parse_args()
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")

    cmds = commands(str(Path(args.recipe).resolve()))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    print(
        f"start-up: {args.reps} interleaved reps, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at start")
    with tempfile.TemporaryDirectory(prefix="gan-pipe-startup-") as cwd:
        for argv in cmds.values():  # one untimed run each: file caches warm, as for a user
            run_once(argv, cwd, env)
        for _ in range(args.reps):
            for name, argv in cmds.items():
                wall, used = run_once(argv, cwd, env)
                times[name].append(wall)
                cpu[name].append(used)
        base = statistics.median(times["python -c pass"])
        base_cpu = statistics.median(cpu["python -c pass"])
        for name, ts in times.items():
            med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
            line = (
                f"{name:<18}: wall median {med:.3f} s  min {min(ts):.3f} s; "
                f"CPU median {med_cpu:.3f} s"
            )
            if name != "python -c pass":
                over, over_cpu = med - base, med_cpu - base_cpu
                line += (
                    f"\n{'':<18}  above interpreter: wall {over:+.3f} s "
                    f"(goal < {GOAL_S} s: {'met' if over < GOAL_S else 'NOT met'}), "
                    f"CPU {over_cpu:+.3f} s ({'met' if over_cpu < GOAL_S else 'NOT met'})"
                )
            print(line)
        print(f"load    : {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at end")
        if args.importtime:
            for name, argv in cmds.items():
                if name == "python -c pass":
                    continue
                parts, heavy = importtime(argv, cwd, env, args.top)
                shown = ", ".join(f"{pkg} {s:.3f}" for pkg, s in parts)
                print(f"imports {name}: {shown} (s, cumulative, one run)")
                print(f"heavy   {name}: imports {', '.join(heavy) or 'none'} of {', '.join(HEAVY)}")


if __name__ == "__main__":
    main()
