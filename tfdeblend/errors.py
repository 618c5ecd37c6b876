"""User-facing errors.

Every error that a user can cause (bad input, missing file, mismatched model) is raised as a
:class:`TfdeblendError` with a one-line message. The CLI turns it into ``Error: <message>`` and a
non-zero exit status, never a traceback.
"""


class TfdeblendError(Exception):
    """An error caused by the user's input, reported as one clear line."""


class CatalogError(TfdeblendError):
    """The catalog is missing columns, empty or too small for the request."""


class DataError(TfdeblendError):
    """A dataset directory, shard, manifest or FITS file is missing, corrupt or inconsistent."""


class ModelError(TfdeblendError):
    """A model directory is missing, foreign, or does not match the data."""
