"""The search service: HTTP API, ARD map tiles and the web page (FastAPI; no dagster)."""
