"""The on-disk formats read and written: insightface RecordIO, insightface .bin verification sets,
image folders."""
