"""The zero-shot evaluation protocol (simulated clicks, boxes, propagation) and the classical
baselines it is compared with.
"""
