"""Everything of napari-ra-joints that needs no GUI.

Joint vocabulary, image I/O, the annotation store, phantoms, export to MONAI datasets, metrics
and the ``ra-joints`` command line. The napari plugin and the MONAI bundles import from here;
nothing here imports napari or Qt.
"""

__version__ = "0.1.0"
