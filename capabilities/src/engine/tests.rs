//! Engine tests: offer choice, breakers, retries, cache and coalescing, with fake offers and paused time.
