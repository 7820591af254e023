"""Filters over rows and texts: MinHash and embedding dedup, ROUGE-L novelty, heuristic quality filters.

Two kinds, and neither writes anything: a *row filter* returns the reasons a row fails (`heuristics.quality_reasons`,
`row_quality_reasons`); a *pair filter* returns pairs of positions (`minhash.minhash_pairs`,
`embedding.embedding_pairs`, `rouge.novelty_duplicates`), which `dedup.dedup` clusters to keep one row per cluster.
What follows from a verdict (the `rejected` split, `filters`, `duplicate_of`, the funnel, the manifest) is done in
one place, `gen.data.rejections` with the run rewriter `gen.data.rewrite`.

Adding one: a row filter is a check and its reason name in `heuristics.py` plus its switch in
`gen/commands/filter.py`; a pair filter is its own module here, passed to `dedup(..., pair_filters={reason: fn})`
by a flag in `gen/commands/dedup.py`. Two files and a test either way.
"""
