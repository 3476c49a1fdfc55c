"""Check the README's numbers against the code: re-run every README command that states its result.

A checked command is a `python train.py ...` command in a ```bash block of README.md (backslash continuations
joined) whose next line is a comment of the form

    # dev after 180 steps: pearson 72.9, spearmanr 77.0

with the metric names train.py prints. Each is run as written, with three changes: its --output-dir is
replaced by a fresh folder under --out (the README's folder may already hold a run), --no-progress is
added, and --data-dir DIR is added when this script is given one and the command has none (the hub's GLUE
and the classic TSV files hold the same rows in the same order). The last `step N: ...` line the run prints
is compared with the README: the same N, and every stated metric within --tolerance (default 0.1: the
README gives one decimal; a CPU run is deterministic for a given machine and thread count).

  python bench/readme_numbers.py                              # every checked command (minutes each)
  python bench/readme_numbers.py --data-dir ../shared/glue    # offline: GLUE from the TSV files
  python bench/readme_numbers.py --list                       # the commands, without running them

Prints one verdict per command (ok, MISMATCH, FAILED) and writes the same report to OUT/readme_numbers.txt;
exits 1 unless every command is ok. Not part of the test suite: it trains for minutes.
"""
import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATED = re.compile(r"^#\s*dev after (\d+) steps?:\s*(.+)$")
PRINTED = re.compile(r"^step (\d+): (.+)$")

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="the README to check")
p.add_argument("--data-dir", default=None, help="add --data-dir DIR to commands that have none (offline)")
p.add_argument("--tolerance", type=float, default=0.1, help="largest |run - README| per metric, in metric points")
p.add_argument("--out", default=os.path.join(ROOT, "runs", "readme_numbers"),
               help="the runs go to OUT/NAME (NAME: the README's --output-dir basename), replaced on every call")
p.add_argument("--list", action="store_true", help="print the checked commands and what they state; run nothing")
args = p.parse_args()


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def checked_commands(text):
    """[(command line as in the README, argv list, stated steps, {metric: value})] for every checked command."""
    found, in_bash, lines = [], False, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            in_bash = not in_bash and line[3:].strip() in ("bash", "sh", "shell")
        elif in_bash and line.startswith("python train.py"):
            parts = [line]
            while parts[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i].strip())
            command = " ".join(part.rstrip("\\").strip() for part in parts)
            m = STATED.match(lines[i + 1].strip()) if i + 1 < len(lines) else None
            if m:
                stated = dict(re.findall(r"([a-z_]+)\s+(-?\d+(?:\.\d+)?)", m.group(2)))  # as written: "77.0"
                found.append((command, shlex.split(command.split("#")[0]), int(m.group(1)), stated))
        i += 1
    return found


def readme_line(steps, stated):
    return f"    README: after {steps} steps " + ", ".join(f"{k} {v}" for k, v in stated.items())


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


if not os.path.isfile(args.readme):
    fail(f"no README at {args.readme}")
with open(args.readme) as f:
    commands = checked_commands(f.read())
if not commands:
    fail(f"{args.readme} states no result in the checked form ('# dev after N steps: metric value, ...' after a command)")
no_out = [c for c, argv, _, _ in commands if flag(argv, "--output-dir") is None]
if no_out:
    fail(f"a checked README command has no --output-dir, so a user cannot re-run it as written: {no_out[0]}")
names = [os.path.basename(os.path.normpath(flag(argv, "--output-dir"))) for _, argv, _, _ in commands]
if len(set(names)) != len(names):
    fail(f"two checked README commands share an --output-dir name: {names}")
if args.list:
    for (command, _, steps, stated), name in zip(commands, names):
        print(f"{name}: {command}\n{readme_line(steps, stated)}")
    sys.exit(0)


def git(*cmd):
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()


import torch  # noqa: E402 (only for the header; --list and bad input need no torch)
import transformers  # noqa: E402

report = [f"README numbers check, {datetime.date.today()}: commit {git('rev-parse', 'HEAD')}"
          f"{' (uncommitted changes)' if git('status', '--porcelain', '--untracked-files=no') else ''}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()} with "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, tolerance {args.tolerance:g}"
          f"{f', --data-dir {args.data_dir} added' if args.data_dir else ''}", ""]
print(report[0], flush=True)
os.makedirs(args.out, exist_ok=True)
verdicts = []
for (command, argv, steps, stated), name in zip(commands, names):
    run_dir = os.path.join(args.out, name)
    shutil.rmtree(run_dir, ignore_errors=True)  # ours: a fresh run every time
    argv = list(argv)
    argv[argv.index("--output-dir") + 1] = run_dir
    argv += ["--no-progress"] + (["--data-dir", args.data_dir] if args.data_dir and "--data-dir" not in argv else [])
    t0 = time.time()
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    printed = [PRINTED.match(line) for line in proc.stdout.splitlines()]
    last = [m for m in printed if m][-1:] if proc.returncode == 0 else []
    lines = [f"{name}: {command}", readme_line(steps, stated)]
    if not last:
        why = (proc.stderr.strip().splitlines() or ["no 'step N:' line printed"])[-1]
        verdict, lines = "FAILED", lines + [f"    run: exit {proc.returncode}: {why}"]
    else:
        ran = int(last[0].group(1))
        got = {k: float(v) for k, v in re.findall(r"([a-z_]+) (-?[\d.]+(?:e-?\d+)?)", last[0].group(2))}
        off = [k for k, v in stated.items() if k not in got or abs(got[k] - float(v)) > args.tolerance]
        verdict = "ok" if ran == steps and not off else "MISMATCH"
        lines.append(f"    run:    after {ran} steps " + ", ".join(f"{k} {got[k]:.2f}" if k in got else f"{k} (not printed)"
                                                             for k in stated) + f"  ({wall:.0f} s)")
        if verdict != "ok":
            lines.append(f"    differs: {', '.join(off + ([f'steps {ran} vs {steps}'] if ran != steps else []))}")
    lines.insert(0, f"[{verdict}]")
    print("\n".join(lines), flush=True)
    report += lines + [""]
    verdicts.append(verdict)
report.append(f"{verdicts.count('ok')} of {len(verdicts)} commands match the README")
print(report[-1])
with open(os.path.join(args.out, "readme_numbers.txt"), "w") as f:
    f.write("\n".join(report) + "\n")
sys.exit(0 if all(v == "ok" for v in verdicts) else 1)
