"""The tiny Idefics2: built, trained and shipped by this package (see tiny/model/README.md)."""
