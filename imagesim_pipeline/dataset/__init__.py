"""The training dataset: labelled chips selected and split by spatial blocks, with statistics."""
