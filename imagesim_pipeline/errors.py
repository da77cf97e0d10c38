"""The base of imagesim's own errors: an asset catches ``ImagesimError`` once and fails with its message."""


class ImagesimError(RuntimeError):
    """An error whose message names the file, cell or setting at fault and says what to do."""
