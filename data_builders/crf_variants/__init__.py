"""crf_variants TFDS builder: `tfds build data_builders/crf_variants --manual_dir=DIR`."""
