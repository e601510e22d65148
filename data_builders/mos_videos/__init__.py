"""mos_videos TFDS builder: `tfds build data_builders/mos_videos --config=<dataset> ...`."""
