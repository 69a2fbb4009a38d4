"""Stage one: pretrained backbones, image datasets and the HDF5 feature cache."""

__version__ = "0.1.0"
