"""``python -m bench``: run every benchmark and print ratios against baselines measured alongside."""

from __future__ import annotations

from bench import bench_codec, bench_overhead


def main() -> None:
    results: dict[str, float] = {}
    for module in (bench_codec, bench_overhead):
        results.update(module.run())
    print("summary:", ", ".join(f"{k}={v:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
