"""The data set tools behind ``otface data ...``: pack, unpack, pairs, align."""
