"""The two networks: the RDN deblender and the VGG-16 galaxy counter."""
