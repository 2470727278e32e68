"""The parts of the RA joints dock, one module per tab or panel.

Each panel builds its own Qt controls and handles their signals; shared state (the open
project, the open image, the running worker) lives in :class:`napari_ra_joints._widget.
RAJointsWidget`, which the panels reach as ``self.dock``. All data work is done by
:mod:`annotation_tools`; the panels only arrange controls and layers around it.
"""
