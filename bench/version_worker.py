"""A benchmark worker for ``bench_versions``: streams answers through whichever gtl_nb it imports.

Usage: ``python version_worker.py BASE_URL LEDGER``. Prints where gtl_nb was imported from, then for
each line ``N`` on stdin streams N answers from the simulator at BASE_URL and prints the seconds taken.
Only the public API is used, so any version of gtl_nb runs it.
"""

from __future__ import annotations

import sys
import time

import gtl_nb

PROMPT = "Summarise the history of the harbour of Bergen in a few sentences, please."


def main() -> None:
    base_url, ledger = sys.argv[1], sys.argv[2]
    client = gtl_nb.connect(
        providers={"openai": {"api_key": "sim-key", "base_url": base_url}}, ledger=ledger, environ={}
    )
    print(gtl_nb.__file__, flush=True)
    for line in sys.stdin:
        count = int(line)
        start = time.perf_counter()
        for _ in range(count):
            for _event in client.stream("gpt-4o-mini", PROMPT):
                pass
        print(time.perf_counter() - start, flush=True)
    client.close()


if __name__ == "__main__":
    main()
