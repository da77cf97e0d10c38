"""Search: the similarity index over chip embeddings, the query engine and change detection."""
