"""What a user does with the engine: prompted segmentation of nD images, propagation through
stacks, segment everything, and text prompts.
"""
