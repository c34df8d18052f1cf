"""LightningDataModules: in-memory arrays (generated problems) and file-backed datasets."""
