"""tfdeblend: deblending overlapping galaxies with Residual Dense Networks.

Implements Wang, Sreejith, Slosar, Lin & Yoo (2021), "Galaxy Deblending using Residual Dense
Neural networks": an RDN deblender that returns the brightest galaxy of a blend, a VGG-16
classifier that counts galaxies (0-3), and iterative peeling.

Importing the package is cheap: TensorFlow is imported only by the modules that need it.
"""

__version__ = "0.1.0"
