"""The results table printed at the end of a run (a compact view of benchmark.json)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table


def results_table(benchmark_json: Path) -> Table:
    report = json.loads(Path(benchmark_json).read_text())
    variants = report["variants"]
    baseline = variants.get(report["baseline"], {}).get("latency_real", {}).get("p50_ms")
    lengths = report["settings"]["seq_lengths"]
    bs = report["settings"]["throughput_batch_size"]
    table = Table(title=f"{report.get('task', 'sequence-classification')} results on "
                        f"{report['test_examples']} test examples, "
                        f"{report['threads']} threads, {report['cpu']['model']}")
    labels = report.get("metric_labels", {"accuracy": "acc", "macro_f1": "macro-F1"})
    cols = ["variant", *(f"test {label}" for label in labels.values()), "p50 ms", "p99 ms",
            f"p50 ms @{lengths[-1]}", f"thr/s bs{bs} @{lengths[0]}", "size MB", "speed-up"]
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, r in variants.items():
        p50 = r["latency_real"]["p50_ms"]
        longest, shortest = r["by_length"].get(str(lengths[-1])), r["by_length"].get(str(lengths[0]))
        table.add_row(
            name, *(f"{r[m]:.4f}" for m in labels), f"{p50:.2f}", f"{r['latency_real']['p99_ms']:.2f}",
            f"{longest['p50_ms']:.2f}" if longest else "n/a",  # a static model reads texts, not padded ids
            f"{shortest['throughput_per_s']:.0f}" if shortest else "n/a", f"{r['size_mb']:.1f}",
            f"{baseline / p50:.1f}x" if baseline else "-",
        )
    table.caption = ("p50/p99: batch-1 latency on real test sentences (unpadded); speed-up vs "
                     f"{report['baseline']} p50; full table: results.md")
    return table
