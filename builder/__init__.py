"""pybuild: builds Dockerfiles into OCI images, with no daemon."""

__version__ = "0.1.0"
