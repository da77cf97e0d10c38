"""ARD: the Maxar ARD grid, deliveries in the bucket (discovery, summaries) and ingesting imagery into it."""
