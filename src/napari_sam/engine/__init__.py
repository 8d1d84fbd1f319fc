"""The headless engine: preprocessing, the predictor facade, mask post-processing, magnified
and tiled decoding, the mask refiner's crops, and the embeddings (cache, zarr store, cluster).
"""
