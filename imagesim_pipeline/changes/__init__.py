"""Change detection: how much each place changed between its acquisitions, from the chip embeddings."""
