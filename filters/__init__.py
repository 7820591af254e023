"""Filters over rows and texts: MinHash and embedding dedup, ROUGE-L novelty, heuristic quality filters."""
