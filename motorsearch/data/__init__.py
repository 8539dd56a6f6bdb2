"""Tomogram data: readers, the built-in simulator, the voxel cache, patches and targets."""
