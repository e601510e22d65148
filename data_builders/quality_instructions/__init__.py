"""quality_instructions TFDS builder: `tfds build data_builders/quality_instructions [--manual_dir=DIR]`."""
