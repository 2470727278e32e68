"""npe2 reader: radiographs and ultrasound frames through annotation_tools.imageio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from annotation_tools.evaluation import present_centres
from annotation_tools.imageio import looks_like_image_file, read_image
from annotation_tools.store import STORE_FILENAME, AnnotationStore

from ._layers import centres_layer_data, image_layer_data, polygons_layer_data

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Claim the file types annotation_tools can read (DICOM without an extension too: the
    manifest's ``*`` pattern sends every file here and the ``DICM`` preamble decides), and
    project folders (a folder holding the annotation store); leave everything else, a DICOMDIR
    included, to other readers."""
    paths = [path] if isinstance(path, str) else list(path)
    if len(paths) == 1 and (Path(paths[0]) / STORE_FILENAME).is_file():
        return read_project
    if not paths or not all(looks_like_image_file(p) for p in paths):
        return None
    return read_images


def read_project(path: str | list[str]) -> list[LayerData]:
    """A project folder: the first patient's radiographs side by side with the newest joint
    centres and joint-space outlines of each (whoever made them). A read-only overview - the
    RA joints dock is where annotations are edited and saved."""
    folder = Path(path if isinstance(path, str) else path[0])
    layers: list[LayerData] = []
    with AnnotationStore.open(folder, create=False) as store:
        patients = store.patients()
        if not patients:
            raise ValueError(f"the project {folder} holds no images yet")
        offset = 0.0
        for record in store.images(modality="radiograph"):
            if record.patient_id != patients[0]:
                continue
            image = image_layer_data(
                read_image(store.resolve(record)), name=f"{record.patient_id} {record.limb}"
            )
            newest = store.centres(record.id)
            centres = present_centres(newest)
            outlines = {k: r.value["vertices"] for k, r in store.polygons(record.id).items()}
            group = [
                image,
                polygons_layer_data(
                    outlines, name=f"joint spaces {record.patient_id} {record.limb}"
                ),
                centres_layer_data(
                    centres,
                    name=f"joint centres {record.patient_id} {record.limb}",
                    source={k: newest[k].source for k in centres},
                ),
            ]
            for _, kwargs, _ in group:
                kwargs["translate"] = (0.0, offset)
            layers += group
            offset += image[0].shape[1] * 1.05
    return layers


def read_images(path: str | list[str]) -> list[LayerData]:
    """Read every path; one unreadable file raises an error that names it and says why."""
    paths = [path] if isinstance(path, str) else list(path)
    return [image_layer_data(read_image(p)) for p in paths]
