"""Pure pieces of the benchmark: the Pareto front and the sweep-table layout."""

from stages.benchmark import pareto_front, sweep_markdown


def test_pareto_front_keeps_only_undominated_points():
    points = {"slow-best": (10.0, 0.90), "fast-ok": (1.0, 0.85), "dominated": (5.0, 0.84),
              "mid": (3.0, 0.88), "fastest-worst": (0.5, 0.70)}
    assert pareto_front(points) == ["fastest-worst", "fast-ok", "mid", "slow-best"]


def test_pareto_front_ties_on_latency_keep_the_more_accurate():
    assert pareto_front({"a": (1.0, 0.8), "b": (1.0, 0.9)}) == ["b"]


def test_sweep_markdown_has_a_row_per_threads_and_batch():
    cells = {f"t{t}/bs{b}/len{n}": {"threads": t, "batch_size": b, "seq_length": n, "p50_ms": 1.0,
                                     "throughput_per_s": b * 1000.0}
             for t in (1, 2) for b in (1, 8) for n in (16, 64)}
    text = sweep_markdown({"student-int8": cells})
    assert "| threads | batch | len 16 | len 64 |" in text
    assert text.count("\n| 1 |") + text.count("\n| 2 |") == 4
    assert "1.00 (8000)" in text


def test_quantize_selection_breaks_latency_ties_by_accuracy():
    from stages.quantize import select_candidate

    seen = {"dynamic": (1.00, 0.840), "static-minmax": (0.986, 0.835), "percentile": (0.70, 0.80)}
    # Within 5% of the fastest (0.70 ms) only "percentile" itself: it ships.
    assert select_candidate(seen, 0.05) == "percentile"
    near = {"dynamic": (1.00, 0.840), "static-minmax": (0.986, 0.835)}
    assert select_candidate(near, 0.05) == "dynamic"  # 1.4% slower is noise: the more accurate wins
    assert select_candidate(near, 0.0) == "static-minmax"  # no margin: strictly the fastest
    assert select_candidate({"a": (1.0, 0.8), "b": (1.0, 0.8)}, 0.05) in {"a", "b"}
