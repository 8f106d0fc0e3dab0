"""Real face data: what training reads, and the tools and readers around it.

- ``formats/``: the on-disk formats, read and written: insightface RecordIO (``recordio``) and the
  training set over it (``record_dataset``), insightface ``.bin`` verification sets (``binset``),
  image folders (``folder``);
- ``tools/``: the data set tools behind ``otface data ...``: ``pack``, ``unpack``, ``pairs``,
  ``align`` (5-point alignment, also used by the IJB reader);
- ``testpacks/``: the benchmark test-pack readers: IJB-B/C (``ijb``), MegaFace (``megaface``);
- here, shared by all of them and by training: image preprocessing (``transforms``), counted
  skips of unreadable data (``skipping``), batch samplers (``samplers``), UTF-8 text lists read
  line by line (``text``), output files renamed into place together (``staging``).

Dependencies point one way inside: the modules here import none of the subpackages; ``formats``
imports only these; ``tools`` and ``testpacks`` import ``formats`` and these (``testpacks.ijb``
also ``tools.align``).
"""
