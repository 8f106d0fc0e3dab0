"""The benchmark test-pack readers: IJB-B/C (``ijb``) and MegaFace (``megaface``)."""
