"""Images in and out: reading and writing image files, and the synthetic microscopy generator.

The bottom layer with :mod:`napari_sam.modeling`: numpy, scipy and file formats only.
"""
