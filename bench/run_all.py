"""Run the benchmarks in bench/ and summarise their result lines.

    python bench/run_all.py            # every bench/*.py but this file and common.py
    python bench/run_all.py ingest     # only those named

Each benchmark runs as its own process with this environment (DATABASE_URL included); its
output is streamed as it comes, and its last JSON line is its result. Exits non-zero when
a benchmark fails or misses its target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all", "common", "__init__"}


def available() -> list[str]:
    return sorted(path.stem for path in HERE.glob("*.py") if path.stem not in NOT_BENCHMARKS)


def run(name: str) -> tuple[int, dict | None]:
    print(f"\n=== {name} ===", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-u", str(HERE / f"{name}.py")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=HERE.parent,
    )
    result = None
    for line in process.stdout:
        print(line, end="", flush=True)
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                continue
            if isinstance(parsed, dict) and "benchmark" in parsed:
                result = parsed
    return process.wait(), result


def main(argv: list[str]) -> int:
    names = available()
    wanted = [arg.removesuffix(".py") for arg in argv]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        print(f"Unknown benchmark(s): {', '.join(unknown)}. Available: {', '.join(names)}", file=sys.stderr)
        return 2
    selected = wanted or names

    outcomes = [(name, *run(name)) for name in selected]

    print("\n=== summary ===")
    failed = False
    for name, status, result in outcomes:
        if status != 0 or result is None:
            failed = True
            print(f"{name}: FAILED (exit status {status}{'' if result else ', no result line'})")
            continue
        failed = failed or not result["met"]
        print(f"{name}: {'met' if result['met'] else 'NOT MET'} (ratio {result['ratio']}, target {result['target']})")
        print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
