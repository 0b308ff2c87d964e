"""deskpro: reproducible DeSKPro for cloth-changing person re-identification."""

__version__ = "0.2.0"
