"""``python -m bench [NAME ...]``: run the benchmarks (all by default) and print their ratios."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["crypto", "rotation", "refresh_due", "api", "pages"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name} ==", flush=True)
        if not module.main():
            failed.append(name)
        print()
    if failed:
        print(f"targets missed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
