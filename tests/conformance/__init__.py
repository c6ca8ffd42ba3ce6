"""The conformance suite: cases built by Docker's BuildKit and by pybuild, compared file by file (see
testdata/conformance/README.md)."""
