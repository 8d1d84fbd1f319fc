"""micro-sam's fine-tuned models (Archit et al., Nature Methods 2025) in the weights registry.

Each model is two files: SAM's weights, which load into our ``vit_t`` / ``vit_b`` / ``vit_l``
unchanged, and the instance-segmentation decoder
(:class:`~napari_sam.modeling.instance_decoder.InstanceDecoder`), the entry named by
:attr:`~napari_sam.models.weights.WeightsEntry.decoder`. micro-sam publishes only xxh128 hashes
of them (``micro_sam.util.models()``), so these entries are pinned by xxh128 (checked with the
``xxhash`` package) instead of SHA256. Their cache file names are micro-sam's own cache names
(``vit_b_lm``, ``vit_b_lm_decoder``): files copied from micro-sam's cache folder
(``~/.cache/micro_sam/models``) are recognised. Importing :mod:`napari_sam.models` registers them.
"""

from __future__ import annotations

from collections.abc import Iterator

from .weights import WeightsEntry, register_weights

__all__ = ["MICROSAM_MODELS"]

_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
#: Approximate sizes (MB) of micro-sam's files by encoder (SAM's part in float32, as the SAM
#: files of the same size) and of its decoders (measured on our InstanceDecoder: 38-44 MB).
_MICROSAM_MB = {"vit_t": 40.7, "vit_b": 375.0, "vit_l": 1249.5}
_MICROSAM_DECODER_MB = 40.0

#: micro-sam's light- and electron-microscopy models as micro_sam 1.8.14 lists them
#: (``micro_sam.util.models()``): name, bioimage.io folder, xxh128 of SAM's part and of the
#: decoder, family, what it is for.
_MICROSAM = (
    ("vit_t_lm", "faithful-chicken/1.1", "72ec5074774761a6e5c05a08942f981e",
     "3e914a5f397b0312cdd36813031f8823", "micro-sam LM",
     ("micro-sam light microscopy, MobileSAM-sized: cells and nuclei in fluorescence and "
      "label-free images; the fastest, with automatic instance segmentation.")),
    ("vit_b_lm", "diplomatic-bug/1.2", "fe9252a29f3f4ea53c15a06de471e186",
     "708b15ac620e235f90bb38612c4929ba", "micro-sam LM",
     ("micro-sam light microscopy (ViT-B): cells and nuclei in fluorescence and label-free "
      "images, with automatic instance segmentation; micro-sam's recommended model.")),
    ("vit_l_lm", "idealistic-rat/1.2", "017f20677997d628426dec80a8018f9d",
     "2faeafa03819dfe03e7c46a44aaac64a", "micro-sam LM",
     "micro-sam light microscopy (ViT-L): the most accurate LM model, several times slower."),
    ("vit_t_em_organelles", "greedy-whale/1", "253474720c497cce605e57c9b1d18fd9",
     "8f897c7bb93174a4d1638827c4dd6f44", "micro-sam EM",
     ("micro-sam electron microscopy, MobileSAM-sized: mitochondria, nuclei and other roundish "
      "organelles, with automatic instance segmentation.")),
    ("vit_b_em_organelles", "noisy-ox/1.2", "f3bf2ed83d691456bae2c3f9a05fb438",
     "bb6398956a6b0132c26b631c14f95ce2", "micro-sam EM",
     ("micro-sam electron microscopy (ViT-B): mitochondria, nuclei and other roundish "
      "organelles, with automatic instance segmentation.")),
    ("vit_l_em_organelles", "humorous-crab/1.2", "810b084b6e51acdbf760a993d8619f2d",
     "334877640bfdaaabce533e3252a17294", "micro-sam EM",
     "micro-sam electron microscopy (ViT-L): the most accurate EM organelle model."),
)


def _microsam_entries() -> Iterator[WeightsEntry]:
    for name, folder, sam_hash, decoder_hash, family, description in _MICROSAM:
        encoder = name[:5]  # vit_t, vit_b, vit_l
        url = f"{_BIOIMAGEIO}{folder}/files/{encoder}"
        yield WeightsEntry(
            name=name, url=url + ".pt", sha256="", xxh128=sam_hash, filename=name,
            size_mb=_MICROSAM_MB[encoder], description=description, family=family,
            decoder=name + "_decoder",
        )
        yield WeightsEntry(
            name=name + "_decoder", url=url + "_decoder.pt", sha256="", xxh128=decoder_hash,
            filename=name + "_decoder", size_mb=_MICROSAM_DECODER_MB, family=family,
            description=f"the instance-segmentation decoder of {name}",
        )


for _entry in _microsam_entries():
    register_weights(_entry)


#: The registry names of micro-sam's models, smallest first per domain.
MICROSAM_MODELS: tuple[str, ...] = tuple(row[0] for row in _MICROSAM)
