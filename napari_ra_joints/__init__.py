"""napari-ra-joints: the napari side (GUI only) of rheumatoid-arthritis joint scoring.

All reading, storing and computing is done by :mod:`annotation_tools` and the MONAI bundles;
this package turns their results into napari layers and user actions into their calls.
"""

from annotation_tools import __version__

__all__ = ["__version__"]
