"""The project's MONAI bundles, shipped as package data so that an installed wheel can predict.

Each subfolder is a bundle in the MONAI model-zoo layout (``configs/``, ``models/``, ``docs/``,
``LICENSE``). Find them with :func:`annotation_tools.bundles.bundles_dir`, which honours
``RA_JOINTS_BUNDLES``; nothing here is imported at run time.
"""
