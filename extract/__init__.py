"""Torch-free extraction of Mozaik datastores into HDF5 spike-time files (data-server side)."""

__version__ = "0.1.0"
