"""imagesim: Maxar ARD deliveries to chips, a multi-label chip classifier and a similarity index, on Dagster."""
