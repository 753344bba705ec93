"""aam-search: search the privacy-utility trade-off of Anonymizing Adapter Modules."""

__version__ = "0.1.0"
