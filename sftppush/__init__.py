"""sftppush: move every finished upload of an SFTP server into S3, decompressed, losing nothing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sftppush")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
