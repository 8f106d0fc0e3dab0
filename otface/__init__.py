"""otface: deep face recognition with the OTFace loss, margin-based heads and standard protocols."""

__version__ = "0.1.0"
