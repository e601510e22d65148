"""demo_videos TFDS builder: `tfds build data_builders/demo_videos` (no download needed)."""
