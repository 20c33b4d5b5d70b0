"""telediag.evaluation — scoring harnesses (EC57 beat-by-beat, segmentation, segmentation masks)."""
