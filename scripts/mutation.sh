#!/usr/bin/env bash
# Mutation testing (mutmut) of the metric and scoring modules with their fast tests, and
# the mutation score per module. Settings: the [mutmut] section of setup.cfg.
#
#   scripts/mutation.sh                 # the tests listed in setup.cfg
#   scripts/mutation.sh TEST [TEST...]  # other tests (pytest node ids) in their place
#   KEEP=1 scripts/mutation.sh          # keep the scratch copy, to run `mutmut show NAME` in it
#
# It works on a scratch copy of the working tree (tracked and untracked, not ignored files)
# in /tmp, so mutmut's mutants/ folder never lands in the repository. Needs mutmut in the
# virtualenv: .venv/bin/pip install -c constraints.txt mutmut   (tested with 3.8.1).
# About a minute on 2 cores; MUTATION_JOBS sets the number of parallel test processes.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
jobs=${MUTATION_JOBS:-2}
if [ ! -x "$venv/bin/mutmut" ]; then
    echo "mutmut is not installed: $venv/bin/pip install -c constraints.txt mutmut" >&2
    exit 2
fi

work=$(mktemp -d /tmp/unweave-mutation.XXXXXX)
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; fi
cd "$repo"
git ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf - | tar -xf - -C "$work"
cd "$work"

if [ "$#" -gt 0 ]; then  # replace the test selection in the copy's setup.cfg
    "$venv/bin/python" - "$@" <<'PY'
import re, sys
s = open("setup.cfg").read()
tests = "".join(f"    {t}\n" for t in sys.argv[1:])
s, n = re.subn(r"(?m)^pytest_add_cli_args_test_selection =\n(?:    .*\n)+", f"pytest_add_cli_args_test_selection =\n{tests}", s)
assert n == 1, "no pytest_add_cli_args_test_selection in setup.cfg"
open("setup.cfg", "w").write(s)
PY
fi

# One thread per process: a child forked from a process that has run torch's (OpenMP)
# thread pool can hang, which mutmut would report as a timeout.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if ! "$venv/bin/mutmut" run --max-children "$jobs" > mutmut.log 2>&1; then
    tr '\r' '\n' < mutmut.log | tail -40
    echo "mutmut failed; log: $work/mutmut.log" >&2
    exit 1
fi

"$venv/bin/python" - <<'PY'
import json
from pathlib import Path

from mutmut.stats import status_by_exit_code

DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
rows, undetected = [], []
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    status = {name: status_by_exit_code[code] for name, code in codes.items()}
    counted = {n: s for n, s in status.items() if s not in ("skipped", "not checked")}
    killed = sum(s in DETECTED for s in counted.values())
    rows.append((str(meta.relative_to("mutants"))[:-len(".meta")], killed, len(counted)))
    undetected += [(n, s) for n, s in counted.items() if s not in DETECTED]
width = max(len(r[0]) for r in rows)
print(f"{'module':<{width}}  killed / mutants  score")
for path, killed, total in rows:
    print(f"{path:<{width}}  {killed:6d} / {total:<7d}  {100 * killed / max(total, 1):5.1f}%")
killed, total = sum(r[1] for r in rows), sum(r[2] for r in rows)
print(f"{'all':<{width}}  {killed:6d} / {total:<7d}  {100 * killed / max(total, 1):5.1f}%")
if undetected:
    print("\nnot detected (see one with: mutmut show NAME, in the scratch copy kept with KEEP=1):")
    for name, s in sorted(undetected):
        print(f"  {s:10s} {name}")
PY
if [ -n "${KEEP:-}" ]; then echo "scratch copy kept: $work"; fi
